//! Unsupervised learning: autoencoders against the known answer, principal component analysis.

use sinapse::data::{mnist, Dataset};
use sinapse::nn::{Linear, Sequential};
use sinapse::optim::{Adam, LrSchedule};
use sinapse::train::{Task, Trainer};
use sinapse::Rng;

/// PCA's mean squared reconstruction error with k components on the first N bundled MNIST
/// training images, computed with NumPy by `fixtures/make_pca_fixture.py`.
fn pca_mse(k: usize) -> (usize, f64) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mnist_pca.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (v["images"].as_u64().unwrap() as usize, v["pca_mse"][k.to_string()].as_f64().unwrap())
}

/// A linear autoencoder (784 -> k -> 784, no activation, squared error) learns PCA's subspace
/// (Baldi and Hornik, 1989): trained long enough, its reconstruction error on the images it
/// was trained on comes within 2% of PCA's with k components.
#[test]
fn a_linear_autoencoder_matches_pca() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k");
    let all = mnist::load_split(std::path::Path::new(dir), "train").unwrap();
    for k in [16, 32] {
        let (n, pca) = pca_mse(k);
        let x = all.x().narrow(0, 0, n).unwrap();
        let data = Dataset::new(x.clone(), x).unwrap();
        let mut rng = Rng::seed(k as u64);
        let model =
            Sequential::new().add(Linear::new(784, k, &mut rng).unwrap()).add(Linear::new(k, 784, &mut rng).unwrap());
        let epochs = 60;
        let mut opt = Adam::new(sinapse::nn::Module::parameters(&model), 3e-3).unwrap();
        let trainer = Trainer::new(Task::Reconstruction { features: 784 })
            .epochs(epochs)
            .batch_size(64)
            .schedule(LrSchedule::Cosine { t_max: epochs, eta_min: 0.0 });
        trainer.fit(&model, &mut opt, &data).unwrap();
        let mse = f64::from(trainer.evaluate(&model, &data).unwrap().loss);
        println!("k = {k}: linear autoencoder {mse:.6}, PCA {pca:.6}, ratio {:.4}", mse / pca);
        assert!(mse >= pca * 0.999, "k = {k}: {mse} below PCA's optimum {pca}: the check is wrong");
        assert!(mse <= pca * 1.02, "k = {k}: {mse} is more than 2% above PCA's {pca}");
    }
}
