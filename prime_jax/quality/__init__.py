"""Sample-quality figures that need no training run: the maths and the feature networks.

* `text`: generative perplexity of samples under an autoregressive `log_prob_fn`, unigram entropy.
* `frechet`: feature mean/covariance and the Fréchet distance of two Gaussians.
* `fashion_mnist`: the project's Fashion-MNIST classifier (training, features) and its FD.
* `fid`: the FID Inception from pytorch-fid's weights file, its features and FID.
* `python -m prime_jax.quality`: train the classifier, FD or FID of saved samples.

Wiring these into `--mode=sample` (restoring a scorer from a workdir) is prime_jax.sample_quality.
"""
