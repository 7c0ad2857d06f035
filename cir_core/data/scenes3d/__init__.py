"""scenes3d: a rendered 3D composed-retrieval benchmark whose edits move objects and the camera.

Tables of 3 to 6 objects (CLEVR-like: cube, sphere, cylinder, cone; 8 colours; matte or
metal; small or large) are path traced with Mitsuba 3 from a camera orbiting the table.
A query edits an object, moves the camera, or both; its gallery holds the target's table
from other viewpoints and other tables from the target's viewpoint, so that retrieving
the target takes reading both halves of the caption.

One concern per module: `scene` (labels and sampling), `camera` (poses, relations as seen
from the camera), `visibility` (ray casting: how much of each object is seen), `edits`
(edits and their phrasings), `describe` (a description of each image), `render`
(Mitsuba, imported only when rendering), `plan` (splits, hard negatives, query groups)
and `write` (the folder). A folder holds:

    info.json            {"benchmark": "scenes3d", "version": 1, "seed", "image_size", "renderer",
                          "splits": {split: counts}, "held_out": {"combinations", "phrasings", "splits"},
                          "edit_types": {"object", "camera"}, "groups", "vocabulary", "camera", ...}
    images/<id>.png      one per view (id = hash of the table's label and the camera pose)
    scenes.json          {id: {"scene", "camera", "view": {"azimuth", "elevation", "distance"},
                               "objects": [...], "visible": [...], "description"}}
    <split>.json         [{"pairid", "reference", "target", "caption", "edit", "novel", "groups",
                           "reference_scene", "reference_camera", "target_scene", "target_camera",
                           "object_edit", "camera_edit", "visible_fraction",
                           "hard_negatives": {"views", "edits"}}, ...]
    gallery_<split>.json [id, ...]

Only splits with queries are written (`--train 0 --val 0` writes the test split alone).
A gallery image whose "scene" equals a query's "target_scene" but whose "camera" differs
is the right table from the wrong viewpoint; one whose "camera" equals "target_camera"
and whose "scene" differs is the right viewpoint with the wrong edit.
"""
from cir_core.data.scenes3d.camera import RELATIONS, CameraPose, relation
from cir_core.data.scenes3d.describe import describe_view
from cir_core.data.scenes3d.edits import CAMERA_EDITS, HELD_OUT_PHRASINGS, OBJECT_EDITS, PHRASINGS, CameraEdit, \
    ObjectEdit, camera_edit, camera_edits, object_edit, refer
from cir_core.data.scenes3d.plan import GROUP_ORDER, SPLITS, Scenes3DCounts, Scenes3DQuery, Scenes3DSplitPlan, View, \
    plan_splits, query_groups
from cir_core.data.scenes3d.scene import COLORS, HELD_OUT_COMBINATIONS, MATERIALS, SHAPES, SIZES, Scene3D, \
    SceneObject3D, sample_scene
from cir_core.data.scenes3d.visibility import visible_fractions
from cir_core.data.scenes3d.write import BENCHMARK, DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, \
    write_scenes3d_dataset

__all__ = [
    "BENCHMARK", "CAMERA_EDITS", "COLORS", "DEFAULT_IMAGE_SIZE", "GROUP_ORDER", "HELD_OUT_COMBINATIONS",
    "HELD_OUT_PHRASINGS", "MATERIALS", "MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "OBJECT_EDITS", "PHRASINGS", "RELATIONS",
    "SHAPES", "SIZES", "SPLITS", "CameraEdit", "CameraPose", "ObjectEdit", "Scene3D", "SceneObject3D",
    "Scenes3DCounts", "Scenes3DQuery", "Scenes3DSplitPlan", "View", "camera_edit",
    "camera_edits", "describe_view", "object_edit", "plan_splits", "query_groups", "refer", "relation",
    "sample_scene", "visible_fractions", "write_scenes3d_dataset",
]
