"""Views: 3D landmark clouds (on the lung surface), patch explorer, embedding scatter, retrieval,
preprocessing QC pictures, training curves and pictures of the contrastive task.

Every view returns a plotly figure (or an ipywidgets box of FigureWidgets) that works in
JupyterLab and exports to a standalone page with ``fig.write_html(path)``.

Example:
    >>> import numpy as np
    >>> from drasclr_toolkit.viz import landmark_cloud
    >>> fig = landmark_cloud(np.array([[0, 0, 0], [26, 26, 26]]), values=[0.2, 0.8])
    >>> fig.data[0].type
    'scatter3d'
"""

from drasclr_toolkit.viz.compare import bars_with_null, study_figure
from drasclr_toolkit.viz.contrastive import (plot_positive_and_negatives, plot_routing_change,
                                             plot_routing_weights)
from drasclr_toolkit.viz.explorer import PatchExplorer, patch_explorer
from drasclr_toolkit.viz.landmarks import (landmark_centres, landmark_cloud, landmark_trace,
                                           landmark_traces)
from drasclr_toolkit.viz.qc import plot_overlay, plot_patches, plot_registration
from drasclr_toolkit.viz.retrieval import middle_slice, retrieval_gallery
from drasclr_toolkit.viz.scatter import embedding_scatter, reduce_2d
from drasclr_toolkit.viz.slices import slice_figure, slice_viewer
from drasclr_toolkit.viz.surface import image_affine, surface_mesh
from drasclr_toolkit.viz.training import LiveTrainingCurves, plot_training_curves

__all__ = [
    "bars_with_null",
    "LiveTrainingCurves",
    "PatchExplorer",
    "embedding_scatter",
    "image_affine",
    "landmark_centres",
    "landmark_cloud",
    "landmark_trace",
    "landmark_traces",
    "middle_slice",
    "patch_explorer",
    "plot_overlay",
    "plot_patches",
    "plot_positive_and_negatives",
    "plot_registration",
    "plot_routing_change",
    "plot_routing_weights",
    "plot_training_curves",
    "reduce_2d",
    "retrieval_gallery",
    "slice_figure",
    "slice_viewer",
    "study_figure",
    "surface_mesh",
]
