"""The model layer: backbones, heads, the one definition of the distances, checkpoints, images, evaluation maths."""
