"""The zoo's measured targets on MNIST (9,000 train / 1,000 val from the t10k files), as the
README reports them:

    python experiments/zoo_targets.py --data ../shared/data/mnist [--epochs 50] [--json out.json]

- the classic tutorial MLP (784-128-64, ReLU, sigmoid, Adam 1e-3, batch 256, MSE): val MSE;
- PCA with 64 components on the same split, and an MLP recipe with the same latent size that
  beats it (784-512-64 with a linear code, batch 64);
- denoising: MSE of reconstructions of noisy inputs to the clean images vs. of the noisy inputs;
- VAE (latent 2 and 20): val negative ELBO per image;
- anomaly detection, each digit in turn "normal" (trained on it alone), the rest anomalies:
  ROC-AUC per class and the mean.
"""

import argparse
import json
import time

import torch

from fastae import anomaly
from fastae.data import load_mnist, train_val_split
from fastae.models import VAE, DenoisingAutoencoder, MLPAutoencoder
from fastae.train import fit


def pca_mse(train, val, k):
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    basis = v[:k]
    recon = (val - mean) @ basis.T @ basis + mean
    return torch.mean((recon - val) ** 2).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--anomaly-epochs", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    images, labels = load_mnist(args.data)
    x = images.float().div(255).flatten(1)
    train_idx, val_idx = train_val_split(len(x), 0.1, seed=0)
    train, val = x[train_idx], x[val_idx]
    results = {}

    def run(name, model, **kwargs):
        began = time.perf_counter()
        history = fit(model, train, val, epochs=args.epochs, progress=False, **kwargs)
        results[name] = {k: v[-1] for k, v in history.items() if k.startswith("val_")}
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        print(name, results[name], flush=True)
        return model

    torch.manual_seed(0)
    run("mlp classic 784-128-64 mse", MLPAutoencoder())
    results["pca 64"] = {"val_mse": pca_mse(train, val, 64)}
    print("pca 64", results["pca 64"], flush=True)
    torch.manual_seed(0)
    run("mlp 784-512-64 linear code, batch 64", MLPAutoencoder(hidden=[512], latent=64, latent_activation="none"),
        batch_size=64)

    torch.manual_seed(0)
    dae = run("denoising gaussian 0.3", DenoisingAutoencoder(noise="gaussian", noise_level=0.3))
    torch.manual_seed(1)
    noisy = dae.corrupt(val)
    dae.eval()
    with torch.no_grad():
        results["denoising gaussian 0.3"]["mse noisy vs clean"] = torch.mean((noisy - val) ** 2).item()
        results["denoising gaussian 0.3"]["mse denoised vs clean"] = torch.mean((dae(noisy) - val) ** 2).item()
    print("denoising", results["denoising gaussian 0.3"], flush=True)

    for latent in (2, 20):
        torch.manual_seed(0)
        run(f"vae latent {latent}", VAE(latent=latent))

    aucs = {}
    for digit in range(10):
        torch.manual_seed(0)
        model = MLPAutoencoder()
        fit(model, train[labels[train_idx] == digit], epochs=args.anomaly_epochs, progress=False)
        aucs[digit] = anomaly.roc_auc(anomaly.scores(model, val), (labels[val_idx] != digit).numpy())
        print("anomaly", digit, aucs[digit], flush=True)
    results["anomaly roc_auc"] = aucs | {"mean": sum(aucs.values()) / 10}
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
