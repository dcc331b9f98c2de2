"""Teacher (diffusion denoiser) configs: ``--config=nrsfm_jax/configs/teacher.py:<arg>``.

``arg``: ``supervised`` (default; ground-truth 3D of the training subjects, the
paper/D3DP protocol), ``self`` (a trained student's reconstructions; set
``--config.teacher.student_workdir``), ``d3dp`` (supervised at D3DP's size:
spatial-temporal transformer, depth 8, width 512; a GPU config), or
``nrsfm:<sequence>`` (self mode on one nrsfm-mocap sequence).

The data section is the student's (``configs/default.py`` / ``nrsfm.py``), so
the teacher sees the student's training windows. CPU defaults: a per-frame-token
temporal transformer (``model.arch='frame'``, 256 wide, 2 blocks, 180 ms per
step of 16 × 81 frames on 2 cores; the per-joint ``'st'`` model took 1164 ms at
width 64, see ``experiments/benchmark.py``), 3000 steps, DDIM with H = 5
hypotheses × K = 5 steps.
"""

import ml_collections

from nrsfm_jax import data as data_lib
from nrsfm_jax import models
from nrsfm_jax.configs import default, nrsfm

ARGS = ('supervised', 'self', 'd3dp', 'nrsfm')


def get_config(arg=None):
  arg = arg or 'supervised'
  kind, _, sequence = arg.partition(':')
  if kind not in ARGS or (sequence and kind != 'nrsfm'):
    raise ValueError(f'Unknown teacher config {arg!r}; expected one of {ARGS} (nrsfm:<sequence>).')
  student = nrsfm.get_config(sequence or 'drink') if kind == 'nrsfm' else default.get_config()
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = student.data

  c.teacher = ml_collections.ConfigDict()
  c.teacher.mode = 'self' if kind in ('self', 'nrsfm') else 'supervised'
  c.teacher.student_workdir = ''  # self mode: the student run whose reconstructions are the targets
  # Self mode: 'eval' trains on those reconstructions as the student is scored (its observed x, y
  # and test-time bone projection, scoring.as_evaluated; no 3D read); 'none': as the model makes them.
  c.teacher.target_projection = 'none'
  # Self mode: True depth-flips each target frame to the handedness of the student's mean shape
  # (geometry.resolve_flip_by_reference); False keeps the reconstructions' own. cmu17 (False): the
  # resolution leaves 41-50% of the training frames with the true handedness against 54-69% as
  # made, on every fold, and switches it 2.9 times per 100 frames against 1.0 (a human body is
  # near-symmetric, so its mean shape cannot tell); on fold 006 the self teacher's student scored
  # 99.4 mm with it and 88.0 without (README, "The self-mode teacher's targets"). nrsfm sequences
  # (True): there it took e3D-akhter from 0.88-1.03 to 0.52-0.63 on four of five sequences.
  c.teacher.resolve_flips = kind == 'nrsfm'
  # Self mode: where a target frame's knee or elbow bends against the rest of the frame (a limb
  # mirrored in depth, metrics.hinge_outliers), the denoising loss leaves out that frame
  # ('frames') or that limb's two distal joints ('limbs'); 'none' trains on every target. The
  # hinges are (a, b, c, l, r) joint indices (data.CMU_HINGES); no 3D is read.
  c.teacher.hinge_filter = 'none'
  c.teacher.hinges = data_lib.CMU_HINGES
  # Novel views (either mode; no 3D read in self mode): the share of training windows seen from
  # another camera: the window's target 3D turned by one random rotation (yaw about the camera's
  # vertical axis, uniform in ±view_yaw degrees, then pitch in ±view_pitch) and the 2D input
  # replaced by its projection (teacher.novel_views). A self-mode teacher then learns to lift
  # views of its student's shapes that its student never lifted, instead of the map from the
  # same 2D to the same 3D (README, "The self-mode teacher copies its student"). 0 = off: at 0.5 its
  # hypotheses spread (median 17.7 mm against 0.55) but its student scored 88.5 mm on 006 against
  # 86.9 without (README, "its shapes seen from other cameras").
  c.teacher.novel_views = 0.0
  c.teacher.view_yaw = 180.0
  c.teacher.view_pitch = 0.0

  # The denoiser's hyperparameters (DenoiserConfig's defaults: 'frame' tokens, width 256, 2 blocks,
  # 8 heads, MLP ratio 2, root joint 0); the D3DP-like per-joint model is arch='st'.
  c.model = ml_collections.ConfigDict(models.defaults('denoiser'))

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = 'cosine'  # 'cosine' | 'linear'
  c.diffusion.num_timesteps = 1000
  c.diffusion.num_hypotheses = 5  # H, for the pseudo-3D
  c.diffusion.num_steps = 5  # K DDIM steps
  c.diffusion.eta = 0.0
  c.diffusion.aggregation = 'mean'  # 'mean' | 'jpma' (joint-wise reprojection)

  c.eval = ml_collections.ConfigDict()
  # (H, K) pairs scored on the eval split: by default only the pseudo-3D's own setting (its samples
  # are kept and reused by the teacher-alone-as-student score). The grid README's "Teacher
  # sampling" reads, 65 s more per teacher on 2 cores:
  # --teacher_override='eval.grid=((1, 1), (1, 5), (5, 1), (5, 5), (10, 5))'.
  c.eval.grid = ((5, 5),)

  c.optim = ml_collections.ConfigDict(default.get_config().optim.to_dict())
  c.optim.lr = 5e-4
  c.optim.grad_clip = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16
  c.train.num_steps = 3000
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.max_checkpoints = 2
  c.train.eval_batch_size = 32
  c.train.plot = True  # training.png at the end

  if kind == 'nrsfm':
    c.train.batch_size = 8
    c.train.num_steps = 1000
    c.eval.grid = ((1, 5), (5, 5))
  if kind == 'd3dp':
    c.model.arch = 'st'
    c.model.width = 512
    c.model.depth = 8
    c.model.num_heads = 8
    c.train.num_steps = 20000
  return c
