"""Default config: cmu17 development split on a 2-core CPU (BENCHMARKS.md A).

Deviations from the paper, for a ~12-minute CPU budget (``paper.py`` has the
paper's): Adam with cosine decay instead of SGD; a 256-wide, 3-block lifter
instead of C3DPO's 1024/6; 81-frame training windows (the TCN's receptive
field: more independent windows per step for the same compute) evaluated on
243-frame windows (the convolutional refiner runs on any length); Ψ on 32
random frames per window; 2000 steps instead of 120 epochs.
"""

import ml_collections

# Ablation rows of the paper's Table II (the teacher row needs train.pseudo3d,
# from experiments/train_teacher.py).
VARIANTS = ('lifter', 'smooth', 'tcn', 'teacher')


def get_config(arg=None):
  """``arg``: an ablation variant, ``'lifter'`` (C3DPO baseline), ``'smooth'``
  (+ smoothness), ``'tcn'`` (+ smoothness + TCN refiner; the default) or
  ``'teacher'`` (+ the teacher term λ_t; set ``train.pseudo3d``)."""
  variant = arg or 'tcn'
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of {VARIANTS}.')
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cmu17'            # 'cmu17' | 'nrsfm' | 'tracks'
  c.data.path = ''                 # '' = bundled data (cmu17) / required for 'tracks'
  c.data.sequence = 'drink'        # nrsfm: bundled name or .npz path
  c.data.train_subjects = '002,003,005'
  c.data.val_subjects = '006'
  c.data.window = 81
  c.data.eval_window = 243         # 0 = data.window
  c.data.azimuths = (45.0, 135.0, 225.0, 315.0)
  c.data.elevation = 10.0
  c.data.noise_std = 0.0           # 2D noise (data units, mm for cmu17)
  c.data.dropout = 0.0             # keypoint dropout probability

  c.model = ml_collections.ConfigDict()
  c.model.num_bases = 10
  c.model.rotation = 'so3'          # 'so3' (C3DPO) | '6d'
  c.model.lifter_width = 256
  c.model.lifter_blocks = 3
  c.model.canon_width = 256
  c.model.canon_blocks = 3
  c.model.use_refiner = True
  c.model.tcn_channels = 128
  c.model.tcn_kernel = 3
  c.model.tcn_dilations = (1, 3, 9, 27)
  c.model.tcn_causal = True
  c.model.tcn_use_2d = True
  c.model.mlp_width = 256
  c.model.norm = 'layer'            # lifter/Ψ normalisation: 'layer' | 'batch' (C3DPO)
  c.model.observed_xy = True        # test-time x, y = the observed 2D; depth from the model (C3DPO)

  c.loss = ml_collections.ConfigDict()
  c.loss.reproj_kind = 'pseudo_huber'
  c.loss.reproj_scale = 0.03
  c.loss.w_reproj_init = 1.0      # reprojection of the lifter's own output R_t X_t
  c.loss.w_smooth = 1.0           # λ_s (0 disables)
  c.loss.smooth_beta = 1.0
  c.loss.smooth_kind = 'pseudo_huber'
  c.loss.smooth_scale = 0.03
  c.loss.w_teacher = 0.0          # λ_t (needs pseudo-3D)
  c.loss.teacher_kind = 'l2'
  c.loss.teacher_scale = 0.03
  c.loss.w_canon = 1.0            # λ_c
  c.loss.canon_kind = 'pseudo_huber'
  c.loss.canon_scale = 0.03
  c.loss.n_rot = 4
  c.loss.canon_on = 'shape'        # 'shape' (refined S_t) | 'shape_init' (lifter's X_t)
  c.loss.canon_frames = 32        # frames per window sampled for Ψ (0 = all)
  c.loss.w_proc = 0.0             # λ_p (eq. 17; off as in eq. 19)
  c.loss.z_aug_deg = 0.0          # C3DPO z-augmentation: random in-plane input rotation (deg, 0 = off)
  c.loss.z_equivariance_deg = 0.0  # C3DPO z-equivariance: shape from a further-rotated input (deg)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'           # 'adam' | 'sgd'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'     # 'cosine' | 'step' | 'constant'
  c.optim.warmup_steps = 50
  c.optim.decay_epochs = (60, 80)  # 'step' schedule: ×0.1 at these epochs
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0         # global-norm clip (0 = off)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32         # windows per step, global over devices
  c.train.num_steps = 2000
  c.train.num_epochs = 0          # > 0 overrides num_steps
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.train.max_checkpoints = 2
  c.train.parallel = 'auto'       # 'auto' | 'none' | 'pmap' | 'shard_map'
  c.train.eval_batch_size = 64
  c.train.pseudo3d = ''           # .npz of cached teacher pseudo-3D for the train windows

  c.model.use_refiner = variant in ('tcn', 'teacher')
  if variant == 'teacher':
    c.loss.w_teacher = 1.0
  if variant == 'lifter':
    c.loss.w_smooth = 0.0
    # C3DPO's regime: batches of 1024 independent frames, not 32 windows of 81
    # correlated ones (the lifter sees one frame at a time anyway). 400 steps
    # (410k samples, C3DPO's learning-curve budget, ~1.5 min on 2 cores).
    # Measured on the cross-subject mean (README, "cmu17 cross-subject").
    c.data.window = 1
    c.train.batch_size = 1024
    c.train.num_steps = 400
    c.optim.warmup_steps = 20
    c.loss.canon_frames = 0
  if not c.model.use_refiner:
    c.loss.w_reproj_init = 0.0     # Without the refiner the two reprojections coincide.
  return c
