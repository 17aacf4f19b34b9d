//! Fuzzing every reader of outside bytes: CSV, IDX (plain and gzip), safetensors, the TOML
//! spec and the model card (read, checked, and built into a network). A reader may refuse an
//! input with an error; it may not panic, abort or hang.
//!
//! A mutation fuzzer on stable Rust (`cargo fuzz` needs nightly): each target starts from
//! seeds (valid files, built below) and its kept corpus (`fuzz/corpus/<target>/`), and
//! mutates them: bit flips, interesting bytes, deletions, duplications, insertions of random
//! bytes and of the format's own tokens (a dictionary), splices of two inputs, truncation. An
//! input that reaches an outcome no input reached before (an error message of a new kind, or
//! success) joins the corpus, so the search moves through the formats' checks one by one.
//!
//! `cargo test --release` runs a short round of each target (every input of the kept corpus,
//! then 3,000 mutants). A long run:
//! `SINAPSE_FUZZ_INPUTS=1000000 SINAPSE_FUZZ_SAVE=1 cargo test --release --test fuzz`
//! runs that many mutants per target and saves the inputs of new outcomes to the corpus;
//! `SINAPSE_FUZZ_SHOW=1` lists the outcomes reached.

use std::collections::HashSet;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use sinapse::data::csv::{parse_csv, Target};
use sinapse::data::idx::parse_idx;
use sinapse::spec::{ModelCard, ModelSpec};
use sinapse::train::checkpoint::{weights_from_bytes, weights_to_bytes};
use sinapse::{Rng, Tensor};

/// The corpus of a target stops growing at this many inputs (the kept files included).
const MAX_CORPUS: usize = 400;

/// A long run saves at most this many new inputs per target to the kept corpus.
const MAX_SAVED: usize = 64;

/// Inputs longer than this are cut: readers are bounded by the memory there is, not by this,
/// but long inputs make the search slow.
const MAX_LEN: usize = 16 << 10;

/// One reader under test: turns bytes into an outcome (`Ok` or the error's text).
struct FuzzTarget {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    dictionary: &'static [&'static str],
    run: fn(&[u8]) -> Result<(), String>,
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
}

fn csv_target(bytes: &[u8]) -> Result<(), String> {
    let p = Path::new("fuzz.csv");
    parse_csv(bytes, p, Some("label"), Target::Class, None).map_err(|e| e.to_string())?;
    parse_csv(bytes, p, Some("label"), Target::Value, None).map_err(|e| e.to_string())?;
    parse_csv(bytes, p, None, Target::Value, None).map(|_| ()).map_err(|e| e.to_string())
}

fn idx_target(bytes: &[u8]) -> Result<(), String> {
    parse_idx(Path::new("fuzz.idx"), bytes, None).map(|_| ()).map_err(|e| e.to_string())
}

fn idx_gzip_target(bytes: &[u8]) -> Result<(), String> {
    let gz = flate2::read::GzDecoder::new(bytes);
    parse_idx(Path::new("fuzz.idx.gz"), gz, None).map(|_| ()).map_err(|e| e.to_string())
}

fn safetensors_target(bytes: &[u8]) -> Result<(), String> {
    weights_from_bytes(bytes, Path::new("fuzz.safetensors")).map(|_| ()).map_err(|e| e.to_string())
}

fn spec_target(bytes: &[u8]) -> Result<(), String> {
    ModelSpec::parse(text(bytes)?, Path::new("fuzz.toml")).map(|_| ()).map_err(|e| e.to_string())
}

fn card_target(bytes: &[u8]) -> Result<(), String> {
    let card = ModelCard::parse(text(bytes)?, Path::new("model.toml")).map_err(|e| e.to_string())?;
    card.spec.build_model(&card.input_shape, &card.task, &mut Rng::seed(0)).map(|_| ()).map_err(|e| e.to_string())
}

/// A small IDX file: magic, rank, sizes, then bytes.
fn idx_bytes(dims: &[u32]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    let n: u32 = dims.iter().product();
    v.extend((0..n).map(|i| (i * 37 % 256) as u8));
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The `model.toml` of a small trained-model directory, written as a save writes it.
fn card_seed(spec_file: &str, input_shape: &[usize], classes: usize) -> Vec<u8> {
    let spec = ModelSpec::from_file(repo(spec_file)).unwrap();
    let card = ModelCard {
        format: 1,
        task: sinapse::train::Task::Classification { classes },
        feature_names: (0..input_shape.iter().product()).map(|i| format!("f{i}")).collect(),
        input_shape: input_shape.to_vec(),
        classes: None,
        scaler: sinapse::data::Scaler::Standard {
            mean: vec![0.5; input_shape.iter().product()],
            std: vec![1.5; input_shape.iter().product()],
        },
        spec,
    };
    toml::to_string(&card).unwrap().into_bytes()
}

fn targets() -> Vec<FuzzTarget> {
    let head = |path: &str, lines: usize| -> Vec<u8> {
        let t = std::fs::read_to_string(repo(path)).unwrap();
        t.split_inclusive('\n').take(lines).collect::<String>().into_bytes()
    };
    let weights = weights_to_bytes(&[
        ("0.weight".to_string(), Tensor::from_vec(vec![0.5, -1.0, 2.0, 0.25], &[2, 2]).unwrap()),
        ("0.bias".to_string(), Tensor::from_vec(vec![0.1, 0.2], &[2]).unwrap()),
    ])
    .unwrap();
    vec![
        FuzzTarget {
            name: "csv",
            seeds: vec![
                head("data/iris.csv", 12),
                head("data/xor.csv", 5),
                b"a,b,label\n1,2,x\n\"3\",4e1,\"y, z\"\n-5,,x\n".to_vec(),
                b"a,label\r\n1.5,p\r\n2.5,q\r\n".to_vec(),
                b"a,label\r1,p\r2,q\r".to_vec(),
            ],
            dictionary: &[
                ",", "\n", "\r\n", "\r", "\"", "\"\"", "label", "nan", "inf", "-inf", "1e39", "3.4e38", "-0", "1e-45",
                " ", "\u{feff}", "\u{0}", "é",
            ],
            run: csv_target,
        },
        FuzzTarget {
            name: "idx",
            seeds: vec![idx_bytes(&[3, 2, 2]), idx_bytes(&[5]), idx_bytes(&[2, 1, 3, 1])],
            dictionary: &[
                "\u{0}\u{0}\u{8}\u{1}",
                "\u{0}\u{0}\u{8}\u{3}",
                "\u{ff}\u{ff}\u{ff}\u{ff}",
                "\u{0}\u{0}\u{0}\u{0}",
                "\u{7f}",
            ],
            run: idx_target,
        },
        FuzzTarget {
            name: "idx_gzip",
            seeds: vec![gzip(&idx_bytes(&[3, 2, 2])), gzip(&idx_bytes(&[4]))],
            dictionary: &["\u{1f}\u{8b}\u{8}\u{0}", "\u{0}\u{0}\u{0}\u{0}", "\u{ff}"],
            run: idx_gzip_target,
        },
        FuzzTarget {
            name: "safetensors",
            seeds: vec![
                weights,
                std::fs::read(repo("crates/sinapse/tests/fixtures/torch_layers.safetensors")).unwrap(),
            ],
            dictionary: &[
                "{",
                "}",
                "\"dtype\":\"F32\"",
                "\"dtype\":\"F64\"",
                "\"shape\":[",
                "\"data_offsets\":[",
                "]",
                ",",
                "0",
                "18446744073709551615",
                "4294967296",
                "\"__metadata__\":{}",
            ],
            run: safetensors_target,
        },
        FuzzTarget {
            name: "spec",
            seeds: ["models/iris.toml", "models/xor.toml", "models/mnist_cnn.toml", "models/mnist_lstm.toml"]
                .iter()
                .map(|p| std::fs::read(repo(p)).unwrap())
                .collect(),
            dictionary: &[
                "[[layers]]\n",
                "type = \"linear\"\n",
                "type = \"conv2d\"\n",
                "units = ",
                "kernel = ",
                "= 0\n",
                "= -1\n",
                "= 1e9\n",
                "= 18446744073709551616\n",
                "= nan\n",
                "= inf\n",
                "[validation]\n",
                "method = \"kfold\"\n",
                "device = \"cuda\"\n",
                "\"",
                "[",
                "]",
                "\n",
            ],
            run: spec_target,
        },
        FuzzTarget {
            name: "model_card",
            seeds: vec![
                card_seed("models/xor.toml", &[2], 2),
                card_seed("models/iris.toml", &[4], 3),
                card_seed("models/mnist_cnn.toml", &[784], 10),
            ],
            dictionary: &[
                "units = ",
                "out_channels = ",
                "kernel = ",
                "padding = ",
                "hidden = ",
                "input_shape = [",
                "classes = ",
                "= 0\n",
                "= 100000\n",
                "= 4294967296\n",
                "std = [",
                "0.0",
                "-1.0",
                "nan",
                "inf",
                "\n",
                "]",
                ",",
            ],
            run: card_target,
        },
    ]
}

/// Mutates `input`: a few stacked edits drawn at random.
fn mutate(input: &[u8], other: &[u8], dictionary: &[&str], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4).unwrap() {
        let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1).unwrap();
        match rng.below(9).unwrap() {
            0 if !v.is_empty() => {
                let i = rng.below(v.len()).unwrap();
                v[i] ^= 1 << rng.below(8).unwrap();
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len()).unwrap();
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b'-', b'.', b'e'][rng.below(9).unwrap()];
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len()).unwrap();
                let len = 1 + rng.below((v.len() - i).min(64)).unwrap();
                v.drain(i..i + len);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len()).unwrap();
                let len = 1 + rng.below((v.len() - i).min(64)).unwrap();
                let chunk = v[i..i + len].to_vec();
                let j = at(rng, &v);
                v.splice(j..j, chunk);
            }
            4 => {
                let j = at(rng, &v);
                let bytes: Vec<u8> = (0..1 + rng.below(8).unwrap()).map(|_| rng.below(256).unwrap() as u8).collect();
                v.splice(j..j, bytes);
            }
            5 | 6 => {
                let token = dictionary[rng.below(dictionary.len()).unwrap()].as_bytes();
                let j = at(rng, &v);
                v.splice(j..j, token.iter().copied());
            }
            7 if !other.is_empty() => {
                let cut = at(rng, &v);
                let from = rng.below(other.len()).unwrap();
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            8 => {
                let cut = at(rng, &v);
                v.truncate(cut);
            }
            _ => {}
        }
    }
    v.truncate(MAX_LEN);
    v
}

/// The kind of an outcome: success, or the error's text without what it quotes (everything
/// from its first quote to its last: values hold any bytes, quotes included), without what
/// parentheses hold (the columns there are, the classes known), and without tokens holding a
/// digit or looking like hex (positions, sizes, magic bytes). "line 3: 'x' is not a number"
/// and "line 9: 'y' is not a number" are one outcome; a check that fails anew is another.
fn outcome_kind(r: &Result<(), String>) -> String {
    let Err(e) = r else { return "ok".into() };
    // A closing list in parentheses (the columns there are, the classes known) goes first:
    // its names hold any bytes, quotes included.
    let e = match e.rfind(" (") {
        Some(at) if e.ends_with(')') => &e[..at],
        _ => &e[..],
    };
    let is_quote = |c: char| c == '\'' || c == '"' || c == '`';
    let text = match (e.find(is_quote), e.rfind(is_quote)) {
        // After the last quote, a list in parentheses may follow: cut it there.
        (Some(first), Some(last)) if first < last => {
            format!("{} | {}", &e[..first], e[last + 1..].split('(').next().unwrap_or(""))
        }
        _ => e.to_string(),
    };
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty() && !t.chars().any(|c| c.is_ascii_digit()))
        .filter(|t| t.len() < 4 || !t.chars().all(|c| c.is_ascii_hexdigit()))
        .take(16)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kept corpus of a target, as files.
fn corpus_dir(target: &str) -> PathBuf {
    repo("fuzz/corpus").join(target)
}

fn main() {
    let mutants: usize = std::env::var("SINAPSE_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000);
    let save = std::env::var_os("SINAPSE_FUZZ_SAVE").is_some();
    // No fuzzed model may allocate more than 64 MB at once: refused like any allocation the
    // machine cannot give, which keeps each input fast.
    sinapse::backend::set_memory_limit(Some(64 << 20));
    // A panic is reported by this harness, with the input that caused it.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for target in targets() {
        let start = std::time::Instant::now();
        let mut corpus = target.seeds.clone();
        if let Ok(entries) = std::fs::read_dir(corpus_dir(target.name)) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            corpus.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
        }
        let kept = corpus.len() - target.seeds.len();
        let mut seen = HashSet::new();
        let mut new_inputs = Vec::new();
        let mut rng = Rng::seed(0x5eed ^ target.name.len() as u64);
        let mut runs = 0usize;
        let mut panics = 0usize;
        let total = corpus.len() + mutants;
        for i in 0..total {
            let input = if i < corpus.len() {
                corpus[i].clone()
            } else {
                let a = &corpus[rng.below(corpus.len()).unwrap()];
                let b = &corpus[rng.below(corpus.len()).unwrap()];
                mutate(a, b, target.dictionary, &mut rng)
            };
            runs += 1;
            match catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
                Ok(outcome) => {
                    let new = seen.insert(outcome_kind(&outcome));
                    if new && i >= target.seeds.len() && corpus.len() < MAX_CORPUS {
                        corpus.push(input.clone());
                        if i >= target.seeds.len() + kept {
                            new_inputs.push(input);
                        }
                    }
                }
                Err(panic) => {
                    panics += 1;
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let dir = repo("fuzz/crashes").join(target.name);
                    std::fs::create_dir_all(&dir).unwrap();
                    let file = dir.join(format!("crash-{i}"));
                    std::fs::write(&file, &input).unwrap();
                    println!("fuzz {}: PANIC on input {i} ({}): {msg}", target.name, file.display());
                    failed = true;
                }
            }
        }
        if save {
            std::fs::create_dir_all(corpus_dir(target.name)).unwrap();
            for (k, input) in new_inputs.iter().take(MAX_SAVED).enumerate() {
                std::fs::write(corpus_dir(target.name).join(format!("{:04}-{k:04}", kept)), input).unwrap();
            }
        }
        if std::env::var_os("SINAPSE_FUZZ_SHOW").is_some() {
            let mut kinds: Vec<&String> = seen.iter().collect();
            kinds.sort();
            kinds.iter().for_each(|k| println!("  {k}"));
        }
        println!(
            "fuzz {}: {runs} inputs ({kept} from the kept corpus, {mutants} mutants), {} kinds of outcome, {panics} panics, {:.1}s",
            target.name,
            seen.len(),
            start.elapsed().as_secs_f64()
        );
    }
    if failed {
        std::process::exit(1);
    }
}
