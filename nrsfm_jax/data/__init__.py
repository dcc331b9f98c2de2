"""Data: bundled mocap, loaders, cameras, windows, normalisation and batching (numpy only)."""

from nrsfm_jax.data.h36m import H36M_KEPT_JOINTS, H36M_REMOVED_JOINTS, load_h36m, normalize_screen_coordinates
from nrsfm_jax.data.mocap import (
                                 ASSETS_DIR,
                                 CMU_BONES,
                                 CMU_JOINTS,
                                 CMU_MOCAP_PATH,
                                 NRSFM_DIR,
                                 NRSFM_SEQUENCES,
                                 camera_rotation,
                                 list_subjects,
                                 load_mocap,
                                 load_mocap_info,
                                 observe,
                                 orthographic_views,
)
from nrsfm_jax.data.nrsfm import load_nrsfm_sequence, nrsfm_sequence_path
from nrsfm_jax.data.pseudo3d import PSEUDO3D_KEYS, load_pseudo3d, save_pseudo3d
from nrsfm_jax.data.registry import (
                                 dataset_names,
                                 h36m_dataset,
                                 make_dataset,
                                 make_datasets,
                                 parse_names,
                                 protocol_of,
                                 register_dataset,
                                 window_length,
)
from nrsfm_jax.data.summary import format_summary, summarize_bundled
from nrsfm_jax.data.tracks import load_tracks, save_tracks
from nrsfm_jax.data.windows import (
                                 WindowDataset,
                                 batch_indices,
                                 batch_iterator,
                                 build_dataset,
                                 center_2d,
                                 cmu17_dataset,
                                 dataset_scale,
                                 make_windows,
                                 nrsfm_dataset,
                                 reassemble,
                                 steps_per_epoch,
                                 tracks_dataset,
                                 unwindow,
                                 views_dataset,
                                 window_starts,
)

__all__ = [
    'ASSETS_DIR', 'CMU_BONES', 'CMU_JOINTS', 'CMU_MOCAP_PATH', 'H36M_KEPT_JOINTS',
    'H36M_REMOVED_JOINTS', 'NRSFM_DIR', 'NRSFM_SEQUENCES', 'WindowDataset', 'batch_indices',
    'batch_iterator', 'build_dataset', 'camera_rotation', 'center_2d', 'cmu17_dataset',
    'dataset_scale', 'format_summary', 'list_subjects', 'load_h36m', 'load_mocap',
    'load_mocap_info', 'load_nrsfm_sequence', 'load_tracks', 'make_windows',
    'normalize_screen_coordinates', 'nrsfm_dataset', 'nrsfm_sequence_path', 'observe',
    'orthographic_views', 'reassemble', 'save_tracks', 'steps_per_epoch',
    'summarize_bundled', 'tracks_dataset', 'unwindow', 'window_starts', 'views_dataset', 'PSEUDO3D_KEYS',
    'load_pseudo3d', 'save_pseudo3d', 'dataset_names', 'h36m_dataset', 'make_dataset', 'make_datasets',
    'parse_names', 'protocol_of', 'register_dataset', 'window_length',
]
