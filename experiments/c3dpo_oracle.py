r"""The official C3DPO code, run side by side on a cmu17 fold as an oracle (issue #9).

Three stages, two Python environments (the official code is PyTorch; nothing of it is copied
here: it is imported from a clone of https://github.com/facebookresearch/c3dpo_nrsfm):

  # 1. in this project's environment: the fold's frames, normalised as our lifter sees them
  python experiments/c3dpo_oracle.py export --fold=006 --out=runs/oracle/fold_006.npz
  # 2. in an environment with torch (pip install torch numpy visdom matplotlib: the official
  #    model.py imports its visualisation tools): train the official C3DPO class
  python experiments/c3dpo_oracle.py train --c3dpo_dir=<clone> --data=runs/oracle/fold_006.npz \
      --width=256 --layers=3 --steps=400 --out=runs/oracle/c3dpo_256x3_400.npz
  # 3. in this project's environment: score its predictions as ours are (and its rigidity)
  python experiments/c3dpo_oracle.py score --data=runs/oracle/fold_006.npz \
      --predictions=runs/oracle/c3dpo_256x3_400.npz

Training follows the official Human3.6M config (cfgs/h36m.yaml: SGD, lr 1e-3, momentum 0.9,
weight decay 5e-4, batch 1024, z-augmentation and z-equivariance at 22.5°, Huber scaling 0.01,
canonicalization with 4 random rotations, BatchNorm), with the trunk width, depth and step count
as flags; its input is our normalised 2D (one dataset-wide scale, as our lifter's), and each
prediction is its ``shape_image_coord`` (observed x, y of the visible points and its depth:
``replace_keypoints_with_input``), as its evaluation takes it. No bone projection is applied.
argparse rather than absl: the train stage runs in an environment without this project.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _export(args) -> None:
  from nrsfm_jax import data as data_lib
  from nrsfm_jax.configs import default

  subjects = [s for s in args.subjects.split(',') if s]
  if args.fold not in subjects:
    raise SystemExit(f'error: --fold={args.fold} is not one of --subjects={args.subjects}.')
  config = default.get_config('lifter')
  config.data.val_subjects = args.fold
  config.data.train_subjects = ','.join(s for s in subjects if s != args.fold)
  train, evaluation = data_lib.make_datasets(config)
  frames = lambda ds, key: data_lib.unwindow(getattr(ds, key), ds.mask)  # real frames, in order
  np.savez(
      args.out,
      train_keypoints=frames(train, 'keypoints'),
      train_visibility=frames(train, 'visibility'),
      eval_keypoints=frames(evaluation, 'keypoints'),
      eval_visibility=frames(evaluation, 'visibility'),
      eval_points3d=frames(evaluation, 'points3d'),
      scale=np.float64(train.scale),
  )
  counts = (
      f'{int((train.mask > 0).sum())} training frames, {int((evaluation.mask > 0).sum())} eval frames of {args.fold}'
  )
  print(f'{args.out}: {counts}; 2D scale {train.scale:.4g}')


def _train(args) -> None:
  import torch  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, args.c3dpo_dir)
  from model import C3DPO  # pylint: disable=g-import-not-at-top  # the official class, unmodified

  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  torch.set_num_threads(args.threads)
  d = np.load(args.data)
  train_kp, train_vis = d['train_keypoints'].astype(np.float32), d['train_visibility'].astype(np.float32)
  canon = {'use': True, 'n_layers': args.layers, 'n_rand_samples': 4, 'rot_angle': float(np.pi)}
  model = C3DPO(
      n_keypoints=train_kp.shape[1],
      n_fully_connected=args.width,
      n_layers=args.layers,
      independent_phi_for_aug=True,
      canonicalization={**canon, 'n_fully_connected': args.width},
  )
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
  to_torch = lambda kp: torch.from_numpy(kp).permute(0, 2, 1).contiguous()
  n, t0, order, pos = len(train_kp), time.time(), rng.permutation(len(train_kp)), 0
  model.train()
  for step in range(args.steps):
    if pos + args.batch_size > n:
      order, pos = rng.permutation(n), 0
    idx = order[pos : pos + args.batch_size]
    pos += args.batch_size
    opt.zero_grad()
    preds = model(kp_loc=to_torch(train_kp[idx]), kp_vis=torch.from_numpy(train_vis[idx]))
    preds['objective'].backward()
    opt.step()
    if step % 50 == 0 or step == args.steps - 1:
      elapsed = time.time() - t0
      print(
          f"step {step + 1}/{args.steps} | reprojection {float(preds['l_reprojection']):.4f} "
          f"canonicalization {float(preds['l_canonicalization']):.4f} | {elapsed:.0f} s",
          flush=True,
      )
  model.eval()
  points, shapes = [], []
  ekp, evis = d['eval_keypoints'].astype(np.float32), d['eval_visibility'].astype(np.float32)
  with torch.no_grad():
    for i in range(0, len(ekp), 2048):
      preds = model(kp_loc=to_torch(ekp[i : i + 2048]), kp_vis=torch.from_numpy(evis[i : i + 2048]))
      points.append(preds['shape_image_coord'].permute(0, 2, 1).numpy())
      shapes.append(preds['phi']['shape_canonical'].permute(0, 2, 1).numpy())
  np.savez(args.out, points=np.concatenate(points), shapes=np.concatenate(shapes), train_seconds=time.time() - t0)
  print(f'{args.out}: {len(ekp)} eval frames; trained {args.steps} steps in {time.time() - t0:.0f} s')


def _score(args) -> None:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from nrsfm_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from nrsfm_jax import metrics  # pylint: disable=g-import-not-at-top

  d, p = np.load(args.data), np.load(args.predictions)
  scale, gt = float(d['scale']), jnp.asarray(d['eval_points3d'])
  pred = jnp.asarray(p['points']) * scale
  rows = {
      'MPJPE': metrics.mpjpe(pred, gt),  # root-relative, the better depth sign per frame
      'PA-MPJPE': metrics.pa_mpjpe(pred, gt),
      'Stress': metrics.stress(pred, gt),
  }
  for name, value in rows.items():
    print(f'{name:10s} {float(jnp.mean(value)):8.2f} mm')
  frames = np.linspace(0, len(gt) - 1, min(4096, len(gt))).astype(int)
  ratio = float(metrics.nonrigidity(jnp.asarray(p['shapes'])[frames] * scale)) / float(metrics.nonrigidity(gt[frames]))
  print(f'shape deformation / truth {ratio:.3f}')
  hinges = float(jnp.mean(metrics.wrong_hinges(pred, gt, data_lib.CMU_HINGES)))
  print(f'knees and elbows bent wrong {100 * hinges:.1f}%')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='stage', required=True)
  e = sub.add_parser('export')
  e.add_argument('--fold', default='006')
  e.add_argument('--subjects', default='002,003,005,006')
  e.add_argument('--out', required=True)
  t = sub.add_parser('train')
  t.add_argument('--c3dpo_dir', required=True, help='a clone of facebookresearch/c3dpo_nrsfm')
  t.add_argument('--data', required=True)
  t.add_argument('--out', required=True)
  t.add_argument('--width', type=int, default=1024)
  t.add_argument('--layers', type=int, default=6)
  t.add_argument('--steps', type=int, default=400)
  t.add_argument('--batch_size', type=int, default=1024)
  t.add_argument('--seed', type=int, default=0)
  t.add_argument('--threads', type=int, default=2)
  s = sub.add_parser('score')
  s.add_argument('--data', required=True)
  s.add_argument('--predictions', required=True)
  args = parser.parse_args(argv)
  {'export': _export, 'train': _train, 'score': _score}[args.stage](args)


if __name__ == '__main__':
  main()
