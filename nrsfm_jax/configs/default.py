"""Default config: cmu17 development split on a 2-core CPU (docs/benchmarks.md A).

Deviations from the paper, for a ~12-minute CPU budget (``paper.py`` has the
paper's): Adam with cosine decay instead of SGD; a 256-wide, 3-block lifter
instead of C3DPO's 1024/6; 81-frame training windows (the TCN's receptive
field: more independent windows per step for the same compute) evaluated on
243-frame windows (the convolutional refiner runs on any length); Ψ on 32
random frames per window; 2000 steps instead of 120 epochs.

The temporal parts (issue #9 item 3; README "Eval windows with their context", cross-subject
means of the rows anchored to C3DPO's recipe lifter): the smooth and tcn rows keep λ_s = 0.1 and
the paper's causal TCN acting on the canonical shape (``model.refine_space='points'``), and the
TCN is scored with its receptive field of context around every eval window
(``train.eval_context``: its acceleration error 4.81 -> 4.66, MPJPE unchanged). Measured and not
chosen: λ_s = 1 (+ smoothness 86.9 mm against the control's 86.8; the TCN 86.7, accel 4.53
against + smoothness's 4.46), a centred TCN at λ_s = 1 (87.0, accel 4.49), a camera-frame TCN
(``refine_space='camera'``, 006 only: 75.7 against 75.0), and smoothness of the depth's second
differences alone (``loss.terms.smooth`` with ``components='depth'``, ``alpha=0``, λ_s = 10:
+ smoothness 87.0 mm, accel 4.38; the TCN 87.3; README "Smoothness on the depth alone").

Session 31 (README, "The TCN refines what the anchor does not hold"): an anchored tcn row holds
the lifter's own ``R_t X_t`` to its anchor (``loss.terms.teacher.on='points_init'``), and the
refined ``R_t S_t`` answers only to reprojection, smoothness and Ψ. Held on the refined points,
the zero-initialised TCN learned to copy the anchor's per-frame errors (scored without it,
``experiments.evaluate --without_refiner``, the row's own lifter was 1.2-1.3 mm better than the
row). Cross-subject means, one lifter restart: + TCN now improves MPJPE, PA-MPJPE, Stress and
acceleration error over + smoothness on both anchors (classic: 89.6 / 72.2 / 38.5 / 5.00 against
91.5 / 74.2 / 39.3 / 5.09; lifter: 96.3 / 75.1 / 39.1 / 5.12 against 97.4 / 76.2 / 39.4 / 5.34).
+ smoothness still does not improve MPJPE over the ``windows`` control (91.5 against 91.4 on the
classic anchor; 91.9 at λ_s = 1).
"""

import ml_collections

from nrsfm_jax import data as data_lib
from nrsfm_jax import models

# Ablation rows of the paper's Table II (the teacher row needs train.pseudo3d,
# from experiments/train_teacher.py).
VARIANTS = ('lifter', 'windows', 'smooth', 'tcn', 'teacher')


def get_config(arg=None):
  """``arg``: an ablation variant, ``'lifter'`` (C3DPO baseline), ``'smooth'``
  (+ smoothness), ``'windows'`` (the lifter on windows, no smoothness: a control), ``'tcn'``
  (+ smoothness + TCN refiner; the default) or
  ``'teacher'`` (+ the teacher term λ_t; set ``train.pseudo3d``)."""
  variant = arg or 'tcn'
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of {VARIANTS}.')
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cmu17'  # 'cmu17' | 'h36m' | 'nrsfm' | 'tracks'
  # '' = bundled data (cmu17) / h36m: the folder of VideoPose3D's npz files / required for 'tracks'
  c.data.path = ''
  c.data.sequence = 'drink'  # nrsfm: bundled name or .npz path
  # Subjects, trial keys ('002_04') or '-'-prefixed hold-backs ('002,003,-002_04'); see data.load_mocap.
  # '' = the source's standard split (data.DEFAULT_SPLITS): cmu17 002,003,005 / 006 (the development
  # split); h36m the paper's S1,S5,S6,S7,S8 / S9,S11.
  c.data.train_subjects = ''
  c.data.val_subjects = ''
  c.data.detector = 'gt'  # h36m: the 2D file data_2d_h36m_<detector>.npz ('gt', 'cpn_ft_h36m_dbb', ...)
  # NRSfM's setting: also fit the val subjects' 2D (never their 3D). Off = docs/benchmarks.md A.
  c.data.transductive = False
  c.data.window = 81
  c.data.eval_window = 243  # 0 = data.window
  c.data.azimuths = (45.0, 135.0, 225.0, 315.0)
  c.data.elevation = 10.0
  c.data.elevations = ()  # more camera rings: every azimuth also at each of these elevations (deg)
  c.data.noise_std = 0.0  # 2D noise (data units, mm for cmu17)
  c.data.dropout = 0.0  # keypoint dropout probability
  c.data.noise_extent = 0.0  # nrsfm: 2D noise std as a fraction of the sequence's 2D extent (0.01 = "1%")

  # The student's hyperparameters start from StudentConfig's defaults (their one source; see its
  # docstring): K = 10 bases, so3 cameras, 256-wide 3-block lifter and Ψ, the paper's causal
  # 4-layer TCN of 128 channels (dilations 1, 3, 9, 27), LayerNorm, observed x, y at test time.
  c.model = ml_collections.ConfigDict(models.defaults('student'))

  # Eq. 19, one entry per registered term (objective.TERMS): weight (0 disables), robust penalty
  # kind / scale (losses.penalty), and the term's own options.
  c.loss = ml_collections.ConfigDict()
  c.loss.terms = ml_collections.ConfigDict()
  c.loss.terms.reproj = dict(weight=1.0, kind='pseudo_huber', scale=0.03)
  # Reprojection of the lifter's own output R_t X_t (before the refiner).
  c.loss.terms.reproj_init = dict(weight=1.0, kind='pseudo_huber', scale=0.03)
  # λ_s; alpha and beta weigh the first and second differences; on: 'points' (camera frame, the
  # paper's) or 'shape' (canonical); components: 'xyz' (the paper's) or 'depth' (the camera-frame
  # depth only, with on='points').
  # λ_s = 0.1, chosen on the cmu17 cross-subject mean with stacked rows (README): 108.6 mm for the
  # smooth row against 122.4 at the paper's 1.0 (TCN row 116.4 against 121.9).
  c.loss.terms.smooth = dict(
      weight=0.1, kind='pseudo_huber', scale=0.03, alpha=1.0, beta=1.0, on='points', components='xyz'
  )
  # λ_t (needs train.pseudo3d); confidence_scale > 0 weighs each joint by the teacher hypotheses'
  # agreement (1 / (1 + (spread / τ)²), τ = confidence_scale × the median spread; 0 = off).
  # on: what is held to the targets: 'points' (the refined R_t S_t, the paper's), 'points_init'
  # (the lifter's own R_t X_t, before the TCN), or 'points+points_init' (their mean).
  c.loss.terms.teacher = dict(weight=0.0, kind='l2', scale=0.03, confidence_scale=0.0, on='points')
  # λ_c, eq. 18: n_rot random rotations per frame, on the refined S_t ('shape') or the lifter's X_t
  # ('shape_init'), Ψ on `frames` random frames per window (0 = all).
  c.loss.terms.canon = dict(weight=1.0, kind='pseudo_huber', scale=0.03, n_rot=4, on='shape', frames=32)
  # Skeleton rigidity (not in the paper; no 3D used): paired limbs equally long, and each bone's
  # length constant over a window (`temporal`; needs data.window > 1), in normalised 2D units.
  # `lengths` weighs each bone's distance to the `length_quantile` of its image lengths over its
  # camera's frames (`length_by='view'`) or its sequence's ('sequence'): data.sequence_bone_lengths,
  # a length estimate from the 2D alone; 0 = off (at 1 it cost 70 mm on 006, README).
  c.loss.terms.bones = dict(
      weight=0.0,
      kind='pseudo_huber',
      scale=0.03,
      temporal=1.0,
      lengths=0.0,
      length_quantile=0.99,
      length_by='view',
      over='window',
      on='shape',
      bones=data_lib.CMU_BONES,
      pairs=data_lib.CMU_BONE_PAIRS,
  )
  # Knees and elbows bend one way (not in the paper; no 3D used): a depth-flipped limb reprojects
  # as the true one does but bends the wrong way (losses.hinge_loss). `hinges`: (a, b, c, l, r).
  # Off: on 'shape' it was 0 from step 50 (the lifter's own 3D already bends right); on
  # 'reconstruction' (observed x, y + depth) it mirrored the depth (fold 002: 159.4 mm against 114.9).
  c.loss.terms.hinges = dict(weight=0.0, margin=0.05, on='shape', flip_invariant=False, hinges=data_lib.CMU_HINGES)
  c.loss.terms.proc = dict(weight=0.0)  # λ_p (eq. 17; off as in eq. 19)
  c.loss.z_aug_deg = 0.0  # C3DPO z-augmentation: random in-plane input rotation (deg, 0 = off)
  c.loss.z_equivariance_deg = 0.0  # C3DPO z-equivariance: shape from a further-rotated input (deg)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'  # 'adam' | 'sgd'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'  # 'cosine' | 'step' | 'constant'
  c.optim.warmup_steps = 50
  c.optim.decay_epochs = (60, 80)  # 'step' schedule: ×0.1 at these epochs
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.freeze = ()  # modules left as they are, e.g. ('lifter', 'basis') over train.init_from
  c.optim.grad_clip = 1.0  # global-norm clip (0 = off)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # windows per step, global over devices
  c.train.num_steps = 2000
  c.train.num_epochs = 0  # > 0 overrides num_steps
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.train.max_checkpoints = 2
  c.train.parallel = 'auto'  # 'auto' | 'none' | 'pmap' | 'shard_map'
  # XLA CPU's matrix-multiply backend for the train step: 'ynn' (XLA's default, YNNPACK dot
  # fusions) or 'eigen' (plain XLA dots on Eigen; loop.cpu_compiler_options). On 2 cores 'eigen' ran
  # the lifter row's 1024-frame step 1.7x faster and the windowed TCN step 1.5x slower (README,
  # "Speed"). The default stays 'ynn': another backend rounds differently, so a run's numbers
  # (and the README's tables) would not be reproduced bit for bit. No effect off CPU or under pmap.
  c.train.cpu_dots = 'ynn'
  # Several processes (hosts), one global mesh (jax.distributed.initialize; shard_map over every
  # process's devices; each process loads its share of each batch; process 0 writes the files).
  # '' / 0 / -1: from the cluster's environment (SLURM, Open MPI, Cloud TPU); see README "Multi-host".
  c.train.distributed = False
  c.train.coordinator_address = ''  # host:port of process 0
  c.train.num_processes = 0
  c.train.process_id = -1
  c.train.eval_batch_size = 64
  # The TCN at test time (scoring.eval_context): 'receptive_field' runs every eval window widened
  # by the frames of its own sequence that its outputs see (causal: the 80 before it), so only a
  # sequence's own first frames meet padding, as when the whole sequence is one window;
  # 'none' cuts the sequence into bare 243-frame windows, as every run before session 26 was
  # scored (runs without the key read 'none'). Per-frame rows are unaffected.
  c.train.eval_context = 'receptive_field'
  # Test-time bone projection (geometry.bone_length_projection): 'clip' bounds each bone's depth
  # extent by its length estimated from the sequence's own 2D (data.sequence_bone_lengths at
  # eval_bone_quantile, from each camera's frames alone with eval_bone_by='view'; 'sequence'
  # pools a trial's cameras), after scaling the depth differences by eval_bone_gain; 'full' gives
  # every bone its full extent; 'none' leaves the model's depth. The bones are loss.terms.bones'.
  # No 3D is read; a sequence-level (offline) step, like a centred TCN. Chosen on the cmu17
  # cross-subject mean (README, "Bone lengths from the 2D"): the lifter's kept-run MPJPE 112.2 ->
  # 101.6 mm, PA-MPJPE 81.4 -> 79.1, Stress 43.0 -> 39.7 (accel 5.37 -> 5.77), and over all 12
  # restarts 133.0 -> 106.1 with every run below depth 0 (9 of 12 before). Gains 2 and 3 scored
  # 99.3 / 99.6 mm but raised PA-MPJPE and the acceleration error (7.7, 8.6).
  c.train.eval_bone_projection = 'clip'
  c.train.eval_bone_quantile = 0.99
  c.train.eval_bone_by = 'view'
  c.train.eval_bone_gain = 1.0  # 'clip' scales the depth differences by this first (> 1 stretches too)
  c.train.plot = True  # draw the run's loss curves and eval scores into training.png at the end
  # Score the eval split every this many steps (0: only at the end), into metrics.jsonl and the
  # run's training.png. Logged only: nothing is chosen on it (the eval 3D stays unseen by training).
  c.train.eval_every = 500
  # > 1: train this many seeds (seed, seed + 1, ...) and keep the one with the lowest training
  # objective on the training 2D (train.selection_objective; no 3D is read to choose).
  c.train.restarts = 1
  # Which restart is kept (train.select_restart; both read the training 2D alone): 'objective', the
  # lowest training objective, or 'hinges', the fewest knees and elbows bent against the rest of
  # their frame (train.hinge_disagreement; loss.terms.hinges.hinges names them), ties by objective.
  # 'hinges', chosen on the cmu17 cross-subject mean of the lifter row (README, "Which restart to
  # keep"): 99.8 mm against 101.6 at 400 steps (PA-MPJPE 77.2 against 79.1), 96.5 against 96.3
  # at 1600 (PA-MPJPE 78.2 against 78.7); it keeps the same run on 006. Data whose points the
  # hinges do not index (nrsfm sequences) must set 'objective'.
  c.train.selection = 'hinges'
  c.train.init_from = ''  # a trained run whose matching parameters initialise this one
  # The teacher term's targets: a teacher's cached pseudo-3D .npz for the train windows, or a student
  # run's workdir (its own reconstructions of them: an anchor; experiments/ablation.py --stack_anchor).
  c.train.pseudo3d = ''
  # Gaussian smoothing of those targets over time within each training window (frames; 0 = off;
  # padding frames excluded: geometry.smooth_over_time). No 3D is read. Off: σ = 2 on the stacked TCN
  # row's anchor left the cross-subject mean where it was (109.7 mm against 109.8; README).
  c.train.pseudo3d_sigma = 0.0
  # 'eval': put those targets through this row's own test-time treatment first (the observed x, y
  # of the visible points, then the eval_bone_* projection; scoring.as_evaluated), so the student
  # learns what it will be scored as. 'none': the targets as the teacher (or anchor run) makes them.
  c.train.pseudo3d_projection = 'none'
  # 'limbs': a target frame's knee or elbow that bends against the rest of that frame
  # (metrics.hinge_outliers, on loss.terms.hinges.hinges; no 3D read) leaves its two distal joints
  # out of the teacher term; 'frames': the whole frame. 'none': every target joint counts.
  c.train.pseudo3d_hinge_filter = 'none'

  c.model.use_refiner = variant in ('tcn', 'teacher')
  if variant == 'tcn':
    # An anchored tcn row (train.pseudo3d set, e.g. experiments/ablation.py --stack_anchor) holds the
    # lifter's own R_t X_t to its anchor, not the refined R_t S_t: the TCN is left to reprojection,
    # smoothness and Ψ, and no longer learns to copy the anchor's per-frame errors. Chosen on the
    # cmu17 cross-subject mean (README, "The TCN refines what the anchor does not hold", session 31):
    # classic anchor 94.9 -> 89.6 mm (+ smoothness 91.5), lifter anchor 98.0 -> 96.3 (97.4), with
    # Stress and acceleration error below + smoothness's on both. On the refined points and the lifter's
    # both ('points+points_init'): fold 005 96.7 against 91.1.
    c.loss.terms.teacher.on = 'points_init'
  if variant == 'teacher':
    c.loss.terms.teacher.weight = 1.0
    # The student taught by the teacher gets most bone signs right but holds bones short of the
    # extent their 2D lengths allow: its test-time projection also stretches (gain 3, chosen on the
    # cross-subject mean; README, "Bone lengths from the 2D"). At gain 1 it lost on 003 (46.9 ->
    # 55.9 mm).
    c.train.eval_bone_gain = 3.0
  if variant == 'windows':
    # The lifter trained on windows without smoothness: the control of a stacked ablation.
    c.loss.terms.smooth.weight = 0.0
  if variant == 'lifter':
    c.loss.terms.smooth.weight = 0.0
    # C3DPO's regime: batches of 1024 independent frames, not 32 windows of 81
    # correlated ones (the lifter sees one frame at a time anyway). 400 steps
    # (410k samples, C3DPO's learning-curve budget, ~1.5 min on 2 cores).
    # Measured on the cross-subject mean (README, "cmu17 cross-subject"). 1600 steps won a GPU
    # sweep of that protocol (kept-run mean 106.6 against 113.9 mm) but, checked on CPU on 006,
    # kept a run at 160.7 mm, worse than depth 0, and lost on 006 for 4 of 6 seeds: not
    # adopted (README, "Longer lifter training").
    c.data.window = 1
    c.train.batch_size = 1024
    c.train.num_steps = 400
    c.optim.warmup_steps = 20
    c.loss.terms.canon.frames = 0
    # Paired limbs equally long (the bones term's symmetry; its constancy needs windows). Over
    # seeds 0-2 of the cross-subject protocol the lifter's mean MPJPE went from 141.0 to 133.6 and
    # the folds beating depth 0 from 3/12 to 9/12 (README, "Seeds"); seed 0 alone had hidden that
    # the plain lifter inflates depth 1.3-1.7x and loses to depth 0 on every fold for seeds 1, 2.
    c.loss.terms.bones.weight = 10.0
    # Three seeds, keeping the one with the lowest training objective on the training 2D (no 3D
    # read). On two disjoint seed triplets of the cross-subject protocol the kept run's mean MPJPE
    # was 111.1 and 120.7 against the triplets' own means of 133.6 and 135.8, and it beat depth 0
    # on 4/4 folds both times (README, "Restarts"). About 3x the lifter's training time.
    c.train.restarts = 3
  if not c.model.use_refiner:
    c.loss.terms.reproj_init.weight = 0.0  # Without the refiner the two reprojections coincide.
  return c
