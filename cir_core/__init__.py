"""SPRC composed image retrieval: model, data, training, evaluation, index, explanations."""
from cir_core.checkpoints import CheckpointError, load_model, save_model
from cir_core.config import SPRCConfig, available_presets, load_preset
from cir_core.model import ImageEncoding, QueryEncoding, SPRCLossOutput, SPRCModel
from cir_core.transforms import ImageTransform


def create_model(preset: str, **overrides) -> SPRCModel:
    """A randomly initialised model of a named preset; `overrides` use dotted keys."""
    from cir_core.config import apply_overrides

    config = load_preset(preset)
    if overrides:
        config = apply_overrides(config, overrides)
    return SPRCModel(config)


__all__ = [
    "CheckpointError", "ImageEncoding", "ImageTransform", "QueryEncoding", "SPRCConfig", "SPRCLossOutput",
    "SPRCModel", "available_presets", "create_model", "load_model", "load_preset", "save_model",
]
