//! A small transformer encoder learns to sort: each input is 24 random digits, the answer is
//! the same digits in ascending order, predicted at every position at once. The answer is
//! known, so accuracy is exact: a position is right when it holds the digit the sorted
//! sequence has there, and a sequence is right when all 24 positions are.
//!
//! Sorting needs every output position to look at the whole input, which attention does in
//! one step: the encoder (an embedding, sinusoidal positions, 2 layers of 4-head attention
//! and a position-wise network, then a linear layer to 10 digits per position) is compared
//! with an LSTM of similar size trained the same way (Adam, lr 1e-3, batch 64, the same
//! epochs and data). The LSTM reads the 24 digits, then 24 blank steps on which it writes the
//! sorted digits, so it too has seen the whole input before it answers.
//!
//! Run: `cargo run --release --example transformer [EPOCHS]` (default 5)

use sinapse::data::{DataLoader, Dataset};
use sinapse::nn::{
    loss, CellKind, Embedding, Linear, Mode, Module, Parameters, PositionalEncoding, Recurrent, TransformerEncoder,
    TransformerEncoderLayer,
};
use sinapse::optim::{Adam, Optimizer};
use sinapse::{Error, Result, Rng, Tensor};

/// Digits per sequence.
const LEN: usize = 24;
/// Digits 0..=9; the LSTM's blank step is token 10.
const DIGITS: usize = 10;

fn main() -> Result<()> {
    sinapse::work_on_this_thread()?;
    let epochs: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().map_err(|_| Error::InvalidArgument {
            op: "transformer",
            msg: format!("EPOCHS must be a whole number, got {s:?}"),
        })?,
        None => 5,
    };
    let mut rng = Rng::seed(0);
    let train = sorting_task(20_000, &mut rng)?;
    let test = sorting_task(2_000, &mut rng)?;
    println!("sorting {LEN} digits: {} training and {} test sequences, {epochs} epochs", train.len(), test.len());

    let transformer = TransformerSorter::new(&mut Rng::seed(1))?;
    let lstm = LstmSorter::new(&mut Rng::seed(1))?;
    let (t_tokens, t_seqs) = train_and_test("transformer", &transformer, &train, &test, epochs)?;
    let (l_tokens, l_seqs) = train_and_test("lstm", &lstm, &train, &test, epochs)?;
    println!("\nsorted positions right: transformer {t_tokens:.4}, LSTM {l_tokens:.4}");
    println!("whole sequences right: transformer {t_seqs:.4}, LSTM {l_seqs:.4}");
    println!("test accuracy: {t_seqs:.4}");
    Ok(())
}

/// `n` sequences of `LEN` random digits, and the same digits sorted.
fn sorting_task(n: usize, rng: &mut Rng) -> Result<Dataset> {
    let mut x = Vec::with_capacity(n * LEN);
    let mut y = Vec::with_capacity(n * LEN);
    for _ in 0..n {
        let mut digits = (0..LEN).map(|_| rng.below(DIGITS)).collect::<Result<Vec<usize>>>()?;
        x.extend(digits.iter().map(|&d| d as f32));
        digits.sort_unstable();
        y.extend(digits.iter().map(|&d| d as f32));
    }
    Dataset::new(Tensor::from_vec(x, &[n, LEN])?, Tensor::from_vec(y, &[n, LEN])?)
}

/// Trains `model` (digits `[N, LEN]` to logits `[N, LEN, DIGITS]`) and returns its test
/// accuracy per position and per whole sequence.
fn train_and_test(
    name: &str,
    model: &dyn Module,
    train: &Dataset,
    test: &Dataset,
    epochs: usize,
) -> Result<(f32, f32)> {
    println!("\n{name}: {}, {} parameters", model.describe(), model.num_parameters());
    let mut opt = Adam::new(model.parameters(), 1e-3)?;
    let mut loader = DataLoader::new(train, 64)?.shuffle(0);
    let start = std::time::Instant::now();
    for epoch in 1..=epochs {
        let mut loss_sum = 0.0;
        for batch in loader.epoch()? {
            let (x, y) = batch?;
            let logits = model.forward(&x, Mode::Train)?;
            let loss = loss::cross_entropy(&logits.reshape(&[y.elem_count(), DIGITS])?, &y.flatten_all()?)?;
            opt.step(&loss.backward()?)?;
            loss_sum += loss.to_scalar()? * x.shape()[0] as f32;
        }
        let (tokens, seqs) = accuracy(model, test)?;
        println!(
            "epoch {epoch:2}: loss {:.4}, test positions {tokens:.4}, sequences {seqs:.4}, {:.1}s",
            loss_sum / train.len() as f32,
            start.elapsed().as_secs_f32()
        );
    }
    accuracy(model, test)
}

/// The share of positions, and of whole sequences, predicted right.
fn accuracy(model: &dyn Module, data: &Dataset) -> Result<(f32, f32)> {
    let _off = sinapse::no_grad();
    let predicted = model.forward(data.x(), Mode::Eval)?.argmax(2, false)?;
    let right = predicted.eq(data.y())?;
    let tokens = right.mean_all()?.to_scalar()?;
    // A sequence is right when its smallest "right" flag is 1.
    let seqs = right.min(1, false)?.mean_all()?.to_scalar()?;
    Ok((tokens, seqs))
}

/// Embedding, sinusoidal positions, 2 encoder layers (d 64, 4 heads, feed-forward 128), and
/// a linear layer to the digit logits at every position.
#[derive(Parameters)]
struct TransformerSorter {
    embed: Embedding,
    positions: PositionalEncoding,
    encoder: TransformerEncoder,
    head: Linear,
}

impl TransformerSorter {
    fn new(rng: &mut Rng) -> Result<TransformerSorter> {
        let d = 64;
        let layers = (0..2)
            .map(|_| {
                // Pre-norm: without a warm-up of the learning rate it trains steadily where
                // post-norm can lose what it learned for an epoch.
                let mut layer = TransformerEncoderLayer::new(d, 4, 128, 0.0, rng)?;
                layer.norm_first = true;
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TransformerSorter {
            embed: Embedding::new(DIGITS, d, rng)?,
            positions: PositionalEncoding::sinusoidal(LEN, d)?,
            encoder: TransformerEncoder { layers },
            head: Linear::new(d, DIGITS, rng)?,
        })
    }
}

impl Module for TransformerSorter {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.positions.forward(&self.embed.forward(x, mode)?, mode)?;
        self.head.forward(&self.encoder.forward(&h, mode)?, mode)
    }
    fn describe(&self) -> String {
        format!("{} + {} + {}", self.embed.describe(), self.positions.describe(), self.encoder.describe())
    }
}

/// Embedding (digits and a blank), one LSTM layer of 128, and a linear layer to the digit
/// logits on the last `LEN` steps.
#[derive(Parameters)]
struct LstmSorter {
    embed: Embedding,
    lstm: Recurrent,
    head: Linear,
}

impl LstmSorter {
    fn new(rng: &mut Rng) -> Result<LstmSorter> {
        Ok(LstmSorter {
            embed: Embedding::new(DIGITS + 1, 64, rng)?,
            lstm: Recurrent::new(CellKind::Lstm, 64, 128, 1, true, rng)?,
            head: Linear::new(128, DIGITS, rng)?,
        })
    }
}

impl Module for LstmSorter {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        // The digits, then LEN blanks on which the answer is written.
        let blanks = Tensor::full_on(&[x.shape()[0], LEN], DIGITS as f32, x.device())?;
        let steps = self.embed.forward(&Tensor::cat(&[x, &blanks], 1)?, mode)?;
        let out = self.lstm.forward(&steps, mode)?;
        self.head.forward(&out.narrow(1, LEN, LEN)?, mode)
    }
    fn describe(&self) -> String {
        format!("{} + {}", self.embed.describe(), self.lstm.describe())
    }
}
