"""Writes examples/quickstart.ipynb from the cells below (run: python3 examples/make_quickstart.py)."""

import os

import nbformat

CELLS = [
    ("md", "# prime_jax quickstart\n\nThe pure functions composed by hand on a tiny model: the "
           "sub-token code, both objectives on one batch, a few jitted train steps, then "
           "sampling and decoding. Runs in about a minute on a laptop CPU."),
    ("code", "import functools\n\nimport jax\nimport jax.numpy as jnp\nimport numpy as np\n\n"
             "from prime_jax import config as config_lib, data, forward, objectives, sampling\n"
             "from prime_jax import step as step_lib\n"
             "from prime_jax.subtokens import PrimeCode"),
    ("md", "## The code: 256 byte values as ℓ = 2 digits of base 16"),
    ("code", "code = PrimeCode(vocab_size=256, ell=2)\n"
             "print(code, 'mask value', code.mask_value)\n"
             "print('encode(65) =', code.encode(np.array([65])), 'decode ->', "
             "code.decode(code.encode(np.array([65]))))"),
    ("md", "## A tiny model from a config, and a batch of Shakespeare bytes"),
    ("code", "config = config_lib.base_config()\n"
             "config.data.update(name='shakespeare_bytes', seq_len=64)\n"
             "config.model.update(ell=2, d_model=64, num_layers=2, num_heads=2, cond_dim=32)\n"
             "config.optim.update(lr=2e-3, warmup_steps=10)\n"
             "config.train.update(batch_size=16, num_steps=30)\n"
             "task = step_lib.build_task(config, vocab_size=256, example_shape=(64,))\n"
             "loader = data.make_loader(config.data, 'train', batch_size=16, seed=0)\n"
             "batches = iter(loader)\n"
             "tokens = next(batches)['tokens']\n"
             "info = data.dataset_info(config.data)\n"
             "print(tokens.shape, repr(info.decode(tokens[0])[:60]))"),
    ("md", "## Both objectives on one noised batch\n\nThe valid bound uses per-digit marginals "
           "and bounds the NLL; the paper's joint objective does not (it can fall below the "
           "data entropy)."),
    ("code", "state = step_lib.init_state(task, jax.random.key(0), (64,))\n"
             "k_t, k_mask = jax.random.split(jax.random.key(1))\n"
             "t = jax.random.uniform(k_t, (16,), minval=0.05, maxval=1.0)\n"
             "y = forward.mask_subtokens(k_mask, code, tokens, task.loss.schedule.alpha(t))\n"
             "logits = task.model.apply({'params': state.params}, y, t, train=False)\n"
             "valid = objectives.valid_loss(code, task.loss.schedule, logits, tokens, y, t).mean()\n"
             "joint = objectives.joint_loss(code, task.loss.schedule, logits, tokens, y, t).mean()\n"
             "print(f'valid bound {valid / np.log(2):.3f} bits/byte, joint {joint / np.log(2):.3f}')"),
    ("md", "## A few jitted train steps"),
    ("code", "train_step = jax.jit(functools.partial(step_lib.train_step, task), donate_argnums=0)\n"
             "for i in range(30):\n"
             "  state, metrics = train_step(state, next(batches)['tokens'])\n"
             "  if i % 10 == 9:\n"
             "    print(i + 1, {k: round(float(v), 3) for k, v in metrics.items()})"),
    ("md", "## Sample with the marginal sampler and decode"),
    ("code", "sconf = sampling.SamplerConfig(num_steps=64, digit_source='marginal')\n"
             "denoise = lambda y, t: task.model.apply({'params': state.ema_params}, y, t, "
             "train=False)\n"
             "result = jax.jit(lambda key: sampling.sample(key, denoise, code, task.loss.schedule, "
             "(2, 64), sconf, time_agnostic=True))(jax.random.key(2))\n"
             "print('network calls', int(result.num_calls), 'idle steps', int(result.num_idle))\n"
             "for row in np.asarray(result.tokens):\n"
             "  print(repr(info.decode(row)))"),
]


def main():
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                               "language": "python"}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
              else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.ipynb")
  nbformat.write(nb, path)
  print(path)


if __name__ == "__main__":
  main()
