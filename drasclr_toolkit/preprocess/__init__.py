"""preprocess stage: CT → isotropic grid → lung mask → affine to atlas → patches at landmarks.

Main entry points::

    from drasclr_toolkit.preprocess import (Atlas, PatchStore, PreprocessConfig,
        build_default_atlas, preprocess_subject, qc_table, register_affine,
        resample_isotropic, run_preprocessing, segment_lungs)
"""

from drasclr_toolkit.preprocess.atlas import Atlas, landmark_grid
from drasclr_toolkit.preprocess.lungmask import (LungSegConfig, LungSegmentationError,
                                                 lungmask_available, segment_lungs)
from drasclr_toolkit.preprocess.patches import (crop_patches, map_landmarks, patch_fractions,
                                                sample_patches_affine)
from drasclr_toolkit.preprocess.pipeline import (PreprocessConfig, SubjectResult,
                                                 build_default_atlas, preprocess_subject,
                                                 run_preprocessing)
from drasclr_toolkit.preprocess.qc import qc_table, robust_z
from drasclr_toolkit.preprocess.registration import (RegistrationConfig, RegistrationResult,
                                                     ants_available, mask_dice, register_affine,
                                                     transform_from_dict, transform_to_dict)
from drasclr_toolkit.preprocess.resample import clip_hu, resample_isotropic
from drasclr_toolkit.preprocess.store import PatchStore, StoreError

__all__ = [
    "Atlas", "LungSegConfig", "LungSegmentationError", "PatchStore",
    "PreprocessConfig", "RegistrationConfig", "RegistrationResult", "StoreError",
    "SubjectResult", "ants_available", "build_default_atlas", "clip_hu", "crop_patches",
    "landmark_grid", "lungmask_available", "map_landmarks", "mask_dice",
    "patch_fractions", "preprocess_subject", "qc_table", "register_affine",
    "resample_isotropic", "robust_z", "run_preprocessing", "sample_patches_affine",
    "segment_lungs", "transform_from_dict", "transform_to_dict",
]
