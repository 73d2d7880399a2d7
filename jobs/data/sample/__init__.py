"""The embedded sample of "looks" for `ctl sample-data`: scenes, catalogue shots and STL-format pairs.

Modules, in the order the data is made: styles (a look's palette and patterns, an item's variation),
shapes (category silhouettes), items (one item's pixels), plans (a scene's look and layout, the
distractors), effects and render (scenes and catalogue shots), generator (the files and the command),
contact_sheet (a picture of a few scenes with their products).
"""
# How the data is made, and why compatibility is learnable but not trivial:
#
# * Every scene is a *look*: it draws a latent style (a palette of four related colours from a
#   colour scheme, pattern families, pattern scale and orientation, a fabric texture). The scene is
#   split into two *zones* (upper/lower or left/right). Each zone derives its own sub-palette and
#   pattern from the look (zone 0 leads with colours 0/1, zone 1 with colour 2; the two zones may
#   use different pattern families), and an item takes the style of the zone it is placed in. So
#   the items NEAR a product predict it better than the scene as a whole: attention over scene
#   regions conditioned on the product's category has something to find.
# * Each item (3-5 per scene, distinct categories) is its zone's style plus its own variation
#   (hue/saturation/value jitter, which colour is dominant, pattern phase and orientation, a
#   category silhouette with per-item shape parameters), drawn with PIL and filled by compositing
#   a numpy pattern texture through the silhouette mask.
# * A product that appears in a scene is the SAME item identity re-rendered as a catalogue shot:
#   light plain background, centred, other scale/rotation/flip, another pattern phase, neutral
#   lighting. Its pixels are never copied from the scene.
# * Distractors (products in no scene, most of the catalogue) are items of fresh looks drawn from
#   the same distribution, so a same-category negative is as plausible as the positive: a model
#   must match style (colour, pattern, texture), not category.
# * Scenes add nuisance: a wall/floor background in unrelated colours, clutter shapes, a faint
#   mannequin in "outfit" layouts, defocus blur, drop shadows, small item rotations, gradient
#   lighting, brightness/contrast/colour-cast jitter and sensor noise.
# * `--looks outfit` (the default stays `zones`, the above): each look also draws a whole-look cue
#   (styles.OutfitCue, from a stream of its own, so the layout and zones are the zones sample's): an
#   occasion pulls the saturation and value of every colour toward its regime, and a theme colour is
#   the accent of both zones; the scene shows them too (a wash of the theme over the background, the
#   occasion's light), so there is global evidence (the whole picture) beside the local (the zone).
# Every random draw comes from a generator seeded by (seed, stream, item index), never from global
# state, so the output does not depend on the number of workers or on the order of the work.

from jobs.data.sample.generator import generate

__all__ = ["generate"]
