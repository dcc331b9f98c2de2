"""Diffusion: schedules, forward process statistics, samplers with an oracle denoiser, aggregation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import diffusion, geometry


@pytest.mark.parametrize('kind', ['cosine', 'linear'])
def test_schedule_is_a_valid_pytree(kind):
  s = diffusion.make_schedule(kind, 1000)
  assert s.num_timesteps == 1000
  ab = np.asarray(s.alphas_cumprod)
  assert np.all(np.diff(ab) < 0) and 0 < ab[-1] < 1e-2 and ab[0] > 0.99
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod_prev)[1:], ab[:-1])
  assert float(s.alphas_cumprod_prev[0]) == 1.0
  np.testing.assert_allclose(np.cumprod(1 - np.asarray(s.betas, np.float64)), ab, rtol=1e-4)
  # A pytree: it goes through jit as an argument.
  out = jax.jit(lambda sc: sc.betas.sum())(s)
  assert np.isfinite(float(out))


def test_cosine_schedule_follows_its_formula():
  s = diffusion.cosine_schedule(1000)
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.array([0, 100, 500, 900])
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[t], f((t + 1) / 1000) / f(0), rtol=1e-4, atol=1e-6)


def test_bad_schedule_arguments_raise():
  with pytest.raises(ValueError, match='schedule'):
    diffusion.make_schedule('quadratic')
  with pytest.raises(ValueError, match='num_timesteps'):
    diffusion.cosine_schedule(0)
  with pytest.raises(ValueError, match='num_steps'):
    diffusion.ddim_timesteps(10, 11)


def test_q_sample_statistics_match_the_schedule():
  s = diffusion.cosine_schedule(1000)
  n = 200_000
  x0 = jnp.full((n, 1), 2.0)
  for t in (0, 250, 700, 999):
    noise = jax.random.normal(jax.random.PRNGKey(t), x0.shape)
    xt = np.asarray(diffusion.q_sample(s, x0, jnp.full((n,), t), noise))
    ab = float(s.alphas_cumprod[t])
    se_mean = np.sqrt((1 - ab) / n)
    assert abs(xt.mean() - 2.0 * np.sqrt(ab)) < 5 * se_mean + 1e-6
    np.testing.assert_allclose(xt.var(), 1 - ab, rtol=0.02, atol=1e-6)


def test_x0_loss_is_root_relative_and_masked():
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 3))
  shifted = x0 + jnp.array([1.0, -2.0, 3.0])  # A translation is invisible root-relative.
  values, weights = diffusion.x0_loss(shifted, x0)
  np.testing.assert_allclose(values, 0.0, atol=1e-5)
  pred = x0.at[:, :, 2].add(jnp.array([0.0, 3.0, 4.0]))
  mask = jnp.ones((2, 5, 4)).at[1].set(0.0)
  values, weights = diffusion.x0_loss(pred, x0, mask=mask)
  np.testing.assert_allclose(values[0, :, 2], 5.0, rtol=1e-5)
  assert float(jnp.abs(values[1]).sum()) == 0.0
  garbage = pred.at[1].set(jnp.nan)
  grads = jax.grad(lambda p: jnp.sum(diffusion.x0_loss(p, x0, mask=mask)[0]))(garbage)
  assert np.all(np.isfinite(grads)) and float(jnp.abs(grads[1]).sum()) == 0.0


@pytest.mark.parametrize('eta', [0.0, 1.0])
@pytest.mark.parametrize('num_steps', [1, 3, 10])
def test_ddim_with_an_oracle_denoiser_returns_x0_exactly(eta, num_steps):
  s = diffusion.cosine_schedule(1000)
  x0 = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 5, 3))
  oracle = lambda x, t: x0
  out = jax.jit(lambda k: diffusion.ddim_sample(oracle, s, k, x0.shape, num_steps=num_steps, eta=eta))(
      jax.random.PRNGKey(2)
  )
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


def test_ddpm_with_an_oracle_denoiser_returns_x0():
  s = diffusion.linear_schedule(50, beta_start=1e-3, beta_end=0.2)
  x0 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 3))
  out = diffusion.ddpm_sample(lambda x, t: x0, s, jax.random.PRNGKey(3), x0.shape)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


def test_ddpm_step_mean_matches_the_epsilon_form():
  """x0-form posterior mean == DDPM's (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t with the implied ε̂."""
  s = diffusion.cosine_schedule(100)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  xt = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
  t = jnp.array([1, 40, 99])
  eps = diffusion.predict_noise(s, xt, t, x0)
  beta = s.betas[t][:, None]
  ab = s.alphas_cumprod[t][:, None]
  expected = (xt - beta / jnp.sqrt(1 - ab) * eps) / jnp.sqrt(1 - beta)
  out = diffusion.ddpm_step(s, xt, t, x0, jnp.zeros_like(xt))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_ddpm_step_with_the_true_x0_samples_the_previous_marginal():
  """x_t ~ q(x_t|x0), one step with the true x0 → x_{t−1} ~ q(x_{t−1}|x0) = N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1})."""
  s = diffusion.cosine_schedule(1000)
  n = 200_000
  x0 = jnp.full((n, 1), 1.5)
  for t in (10, 300, 800):
    tb = jnp.full((n,), t)
    xt = diffusion.q_sample(s, x0, tb, jax.random.normal(jax.random.PRNGKey(t), x0.shape))
    prev = np.asarray(diffusion.ddpm_step(s, xt, tb, x0, jax.random.normal(jax.random.PRNGKey(t + 1), x0.shape)))
    ab_prev = float(s.alphas_cumprod[t - 1])
    assert abs(prev.mean() - 1.5 * np.sqrt(ab_prev)) < 5 * np.sqrt((1 - ab_prev) / n)
    np.testing.assert_allclose(prev.var(), 1 - ab_prev, rtol=0.02)


def test_ddim_at_eta_one_on_adjacent_steps_has_ddpm_variance():
  s = diffusion.cosine_schedule(1000)
  t = jnp.array([1, 50, 500, 999])
  zeros = jnp.zeros((4, 1))
  sigma = diffusion.ddim_step(s, zeros, t, t - 1, zeros, jnp.ones((4, 1)), eta=1.0)[:, 0]
  np.testing.assert_allclose(sigma**2, s.posterior_variance[t], rtol=1e-3)  # float32 at t = 1


def test_ddim_step_inverts_q_sample_for_the_true_x0():
  """Deterministic DDIM from x_t with the true x0 and its noise lands on q_sample at t_prev."""
  s = diffusion.cosine_schedule(1000)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  eps = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  t, tp = jnp.full((4,), 800), jnp.full((4,), 300)
  xt = diffusion.q_sample(s, x0, t, eps)
  out = diffusion.ddim_step(s, xt, t, tp, x0, jnp.zeros_like(x0), eta=0.0)
  np.testing.assert_allclose(out, diffusion.q_sample(s, x0, tp, eps), atol=1e-5)
  np.testing.assert_allclose(diffusion.predict_noise(s, xt, t, x0), eps, atol=1e-4)


def test_samplers_are_pure_functions_of_the_key():
  s = diffusion.cosine_schedule(1000)
  denoise = lambda x, t: 0.5 * x  # Not an oracle: the output depends on the noise.
  shape = (2, 4, 3)
  a = diffusion.ddim_sample(denoise, s, jax.random.PRNGKey(0), shape, num_steps=4, eta=1.0)
  b = diffusion.ddim_sample(denoise, s, jax.random.PRNGKey(0), shape, num_steps=4, eta=1.0)
  c = diffusion.ddim_sample(denoise, s, jax.random.PRNGKey(1), shape, num_steps=4, eta=1.0)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_hypotheses_are_independent_and_batched_once_per_step():
  s = diffusion.cosine_schedule(1000)
  calls = []

  def denoise(x, t):
    calls.append(x.shape)
    return 0.5 * x

  hyps = diffusion.sample_hypotheses(denoise, s, jax.random.PRNGKey(0), (2, 4, 3), num_hypotheses=3, num_steps=4)
  chex.assert_shape(hyps, (3, 2, 4, 3))
  assert calls == [(6, 4, 3)]  # Traced once inside scan, with batch H·B.
  assert not np.allclose(hyps[0], hyps[1])
  # With an oracle every hypothesis is x0.
  x0 = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 3))
  oracle = diffusion.sample_hypotheses(
      lambda x, t: jnp.tile(x0, (3, 1, 1)), s, jax.random.PRNGKey(0), x0.shape, num_hypotheses=3, num_steps=2
  )
  np.testing.assert_array_equal(oracle, jnp.broadcast_to(x0, (3,) + x0.shape))


def test_joint_reprojection_aggregation_picks_the_right_hypothesis_per_joint():
  rng = np.random.default_rng(0)
  truth = rng.normal(size=(5, 3)).astype(np.float32)
  truth = np.asarray(geometry.root_relative(truth))
  keypoints = truth[:, :2] - truth[:, :2].mean(0) + 7.0  # Any image translation.
  vis = np.ones(5, np.float32)
  owner = np.arange(5) % 4  # Joint j is exact in hypothesis j mod 4.
  hyps = np.repeat(truth[None], 4, 0)
  for h in range(4):
    others = owner != h
    offsets = rng.normal(scale=0.5, size=(others.sum(), 2))
    # Zero-mean x, y errors keep the hypothesis' centroid on the truth's, so
    # its owned joints reproject exactly after the translation fit.
    hyps[h, others, :2] += offsets - offsets.mean(0)
    hyps[h, :, 2] += rng.normal(scale=0.3, size=5)
  hyps[owner, np.arange(5), 2] = 100.0 + np.arange(5)
  hyps = hyps.astype(np.float32)
  out = np.asarray(diffusion.aggregate_joint_reprojection(jnp.asarray(hyps), keypoints, vis))
  err = np.asarray(diffusion.joint_reprojection_errors(jnp.asarray(hyps), keypoints, vis))
  np.testing.assert_array_equal(np.argmin(err, 0), np.arange(5) % 4)
  np.testing.assert_array_equal(out, hyps[np.arange(5) % 4, np.arange(5)])
  # An invisible joint takes the mean hypothesis.
  vis[3] = 0.0
  out = np.asarray(diffusion.aggregate_joint_reprojection(jnp.asarray(hyps), keypoints, vis))
  np.testing.assert_allclose(out[3], hyps[:, 3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(
      diffusion.aggregate(jnp.asarray(hyps), keypoints, vis, method='mean'), hyps.mean(0), rtol=1e-6
  )
  with pytest.raises(ValueError, match='aggregation'):
    diffusion.aggregate(jnp.asarray(hyps), keypoints, vis, method='median')


def test_joint_reprojection_ignores_image_translation_and_vmaps():
  rng = np.random.default_rng(1)
  hyps = jnp.asarray(rng.normal(size=(3, 6, 4, 3)), jnp.float32)  # [H, B, P, 3]
  kp = jnp.asarray(rng.normal(size=(6, 4, 2)), jnp.float32)
  vis = jnp.ones((6, 4))
  a = diffusion.aggregate_joint_reprojection(hyps, kp, vis)
  b = diffusion.aggregate_joint_reprojection(hyps, kp + 3.0, vis)
  np.testing.assert_allclose(a, b, atol=1e-6)
  per_example = jax.vmap(diffusion.aggregate_joint_reprojection, in_axes=(1, 0, 0))(hyps, kp, vis)
  np.testing.assert_allclose(per_example, a, atol=1e-6)


def test_hypothesis_spread_is_rms_distance_to_the_mean_and_ignores_shared_translation():
  rng = np.random.default_rng(0)
  hyps = rng.normal(size=(4, 2, 3, 5, 3)).astype(np.float32)
  spread = diffusion.hypothesis_spread(jnp.asarray(hyps), root=None)
  dev = hyps - hyps.mean(0)
  np.testing.assert_allclose(spread, np.sqrt((dev**2).sum(-1).mean(0)), rtol=1e-5)
  # Root-relative: moving each hypothesis as a whole changes nothing; agreeing hypotheses have 0 spread.
  shifted = hyps + rng.normal(size=(4, 2, 3, 1, 3))
  np.testing.assert_allclose(diffusion.hypothesis_spread(shifted), diffusion.hypothesis_spread(hyps), atol=1e-5)
  same = np.broadcast_to(hyps[:1], hyps.shape)
  np.testing.assert_allclose(diffusion.hypothesis_spread(same), 0.0, atol=1e-6)
