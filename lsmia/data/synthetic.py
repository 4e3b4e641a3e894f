"""The built-in benchmark: procedurally rendered face identities.

An identity is a combination of categorical attributes (face shape, skin tone, hair,
eyes, ...). Every attribute value is shared by many identities, so only the whole
combination identifies a person, and every identity, private or public, has its own
combination. Each image re-draws nuisance factors (pose, lighting, background, clothes,
expression, colour cast, noise) whose strength scales with ``DataConfig.difficulty``.

Rendering is fully vectorised: soft shape masks on per-image face-coordinate grids,
alpha-composited back to front at twice the output size, then area-downsampled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lsmia.config import DataConfig
from lsmia.data.base import FaceData, ImageSet, require_study_classes, split_indices
from lsmia.errors import LsmiaError
from lsmia.utils import require_memory

ATTRIBUTE_VALUES: dict[str, list[str]] = {
    "face_shape": ["round", "oval", "long", "square"],
    "skin_tone": ["pale", "light", "medium", "tan", "dark"],
    "hair_colour": ["black", "brown", "blonde", "red", "grey"],
    "hair_style": ["bald", "short", "long", "curly"],
    "hairline": ["high", "medium", "low"],
    "eye_colour": ["brown", "blue", "green", "grey"],
    "eye_spacing": ["narrow", "medium", "wide"],
    "eye_size": ["small", "large"],
    "brows": ["thin", "thick", "arched"],
    "nose": ["small", "long", "wide"],
    "mouth": ["thin", "full", "wide"],
    "ears": ["small", "large"],
    "glasses": ["none", "clear", "sunglasses"],
    "beard": ["none", "moustache", "full"],
    "mole": ["none", "left", "right"],
}

# Numeric rendering parameters per attribute value (rows follow ATTRIBUTE_VALUES).
FACE_SHAPE = torch.tensor([[0.47, 0.54, 2.0], [0.42, 0.58, 2.0], [0.38, 0.64, 2.2], [0.46, 0.56, 3.6]])  # a, b, p
SKIN = torch.tensor(
    [[0.97, 0.86, 0.78], [0.92, 0.75, 0.62], [0.80, 0.60, 0.45], [0.64, 0.45, 0.31], [0.42, 0.28, 0.19]]
)
HAIR = torch.tensor(
    [[0.09, 0.07, 0.06], [0.40, 0.24, 0.12], [0.90, 0.77, 0.45], [0.72, 0.30, 0.12], [0.72, 0.72, 0.74]]
)
HAIRLINE_DEPTH = torch.tensor([0.12, 0.20, 0.28])  # fraction of the face height below its top
IRIS = torch.tensor([[0.30, 0.16, 0.06], [0.20, 0.50, 0.95], [0.20, 0.65, 0.25], [0.62, 0.64, 0.68]])
EYE_HALF_GAP = torch.tensor([0.14, 0.18, 0.22])
EYE_RADII = torch.tensor([[0.065, 0.040], [0.090, 0.056]])  # rx, ry
BROWS = torch.tensor([[0.020, 0.0], [0.045, 0.0], [0.026, 3.0]])  # half thickness, arch curvature
NOSE = torch.tensor([[0.05, 0.10], [0.05, 0.19], [0.09, 0.12]])  # half width, length
MOUTH = torch.tensor([[0.11, 0.018], [0.11, 0.042], [0.18, 0.024]])  # half width, half thickness
EAR_HEIGHT = torch.tensor([0.09, 0.15])
MOLE_SIDE = torch.tensor([0.0, -1.0, 1.0])

FAMILY_SIZE = 2  # identities per look-alike family
FAMILY_DIFFERENCES = 2  # attributes in which a look-alike differs from its family's base
RENDER_BATCH = 512
SUPERSAMPLE = 2
RENDER_WORKING_TENSORS = 8  # float images of a render batch alive at once (estimate)
# Rendering runs in float64 and is quantised to uint8 at the end: float32 transcendental functions and random
# normals differ in their last bits between CPUs (vector width, AVX2 or AVX-512 kernels), which flipped the
# rounding of some pixels, so two machines wrote different data sets. In float64 those differences lie ~1e9
# times below a rounding boundary's width.
RENDER_DTYPE = torch.float64
FACE_CENTRE_V = 0.04  # the face ellipse centre, below the image centre to leave room for hair
ZOOM = 1.3  # image units per face unit: the face fills most of the frame, as in cropped face data sets


def attribute_names() -> list[str]:
    """The built-in attributes, in a fixed order."""
    return list(ATTRIBUTE_VALUES)


def attribute_cardinality() -> dict[str, int]:
    return {name: len(values) for name, values in ATTRIBUTE_VALUES.items()}


# --------------------------------------------------------------------------- identities


def _balanced_column(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """n values in 0..k-1, each used floor(n/k) or ceil(n/k) times, in random order."""
    start = int(torch.randint(k, (1,), generator=gen))
    values = (torch.arange(n) + start) % k
    return values[torch.randperm(n, generator=gen)]


def _draw_group(n: int, gen: torch.Generator) -> torch.Tensor:
    """Families of look-alikes: members copy a balanced base combination and re-draw a few attributes.

    Look-alikes keep the benchmark from being trivially separable: random combinations of
    15 attributes differ in about ten of them, while family members differ in only a few.
    """
    cards = torch.tensor(list(attribute_cardinality().values()))
    families = -(-n // FAMILY_SIZE)
    base = torch.stack([_balanced_column(families, int(k), gen) for k in cards], dim=1)
    combos = base.repeat_interleave(FAMILY_SIZE, dim=0)[:n]
    is_relative = (torch.arange(n) % FAMILY_SIZE != 0).unsqueeze(1)
    rank = torch.rand(combos.shape, generator=gen).argsort(dim=1).argsort(dim=1)
    changed = (rank < FAMILY_DIFFERENCES) & is_relative
    offset = 1 + (torch.rand(combos.shape, generator=gen) * (cards - 1)).long()  # never 0: a real change
    combos = torch.where(changed, (combos + offset) % cards, combos)
    return combos[torch.randperm(n, generator=gen)]


def _all_distinct(combos: torch.Tensor) -> bool:
    return len(torch.unique(combos, dim=0)) == len(combos)


def sample_identities(
    num_private: int, num_public: int, seed: int, max_tries: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct attribute combinations [n, num_attributes] for the private and the public identities.

    Each group uses every attribute value about equally often; no combination repeats,
    within or across the groups.
    """
    space = math.prod(attribute_cardinality().values())
    if num_private + num_public > space // 100:
        raise LsmiaError(
            f"{num_private + num_public} built-in identities asked for, more than the "
            f"{space // 100} the attribute space supports: lower data.num_identities or "
            "data.num_public_identities"
        )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_tries):
        private, public = _draw_group(num_private, gen), _draw_group(num_public, gen)
        if _all_distinct(torch.cat([private, public])):
            return private, public
    raise LsmiaError("could not draw distinct identity combinations: lower data.num_identities")


# --------------------------------------------------------------------------- nuisance


def _rand(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(*shape, generator=gen, dtype=RENDER_DTYPE)


def _randn(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=RENDER_DTYPE)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return _rand(n, gen=gen) * (high - low) + low


def _symmetric(n: int, half_range: float, gen: torch.Generator) -> torch.Tensor:
    return _uniform(n, -half_range, half_range, gen)


def draw_nuisance(n: int, difficulty: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image nuisance parameters; difficulty 0 gives the canonical, identical rendering."""
    d = difficulty
    background_mix = _rand(n, 1, gen=gen) * min(1.0, d)
    clothes_mix = _rand(n, 1, gen=gen) * min(1.0, d)
    return {
        "shift": torch.stack([_symmetric(n, 0.10 * d, gen), _symmetric(n, 0.08 * d, gen)], 1),
        "scale": 1.0 + _symmetric(n, 0.12 * d, gen),
        "angle": _symmetric(n, math.radians(14.0) * d, gen),
        "yaw": _symmetric(n, 0.9 * d, gen),
        "light_angle": _uniform(n, 0.0, 2 * math.pi, gen),
        "light_strength": _rand(n, gen=gen) * 0.45 * d,
        "brightness": 1.0 + _symmetric(n, 0.22 * d, gen),
        "background": torch.full((n, 3), 0.55, dtype=RENDER_DTYPE) * (1 - background_mix)
        + _rand(n, 3, gen=gen) * background_mix,
        "background_gradient": _randn(n, 2, gen=gen) * 0.18 * d,
        "clothes": torch.full((n, 3), 0.30, dtype=RENDER_DTYPE) * (1 - clothes_mix)
        + _rand(n, 3, gen=gen) * clothes_mix,
        "smile": _symmetric(n, 1.8 * d, gen),
        "mouth_open": _rand(n, gen=gen) * 0.6 * d,
        "eye_open": 1.0 - _rand(n, gen=gen) * 0.55 * d,
        "tint": 1.0 + _randn(n, 3, gen=gen) * 0.06 * d,
        "noise": _rand(n, gen=gen) * 0.04 * d,
    }


def _identity_params(combos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Numeric rendering parameters [n, ...] of each row of attribute combinations."""
    col = {name: combos[:, i] for i, name in enumerate(ATTRIBUTE_VALUES)}
    face = FACE_SHAPE[col["face_shape"]]
    params = {
        "face_a": face[:, 0],
        "face_b": face[:, 1],
        "face_p": face[:, 2],
        "skin": SKIN[col["skin_tone"]],
        "hair": HAIR[col["hair_colour"]],
        "hair_style": col["hair_style"],
        "hairline": HAIRLINE_DEPTH[col["hairline"]],
        "iris": IRIS[col["eye_colour"]],
        "eye_gap": EYE_HALF_GAP[col["eye_spacing"]],
        "eye_rx": EYE_RADII[col["eye_size"], 0],
        "eye_ry": EYE_RADII[col["eye_size"], 1],
        "brow_half": BROWS[col["brows"], 0],
        "brow_arch": BROWS[col["brows"], 1],
        "nose_w": NOSE[col["nose"], 0],
        "nose_len": NOSE[col["nose"], 1],
        "mouth_w": MOUTH[col["mouth"], 0],
        "mouth_half": MOUTH[col["mouth"], 1],
        "ear_h": EAR_HEIGHT[col["ears"]],
        "glasses": col["glasses"],
        "beard": col["beard"],
        "mole": MOLE_SIDE[col["mole"]],
    }
    return {name: v.to(RENDER_DTYPE) if v.is_floating_point() else v for name, v in params.items()}


# --------------------------------------------------------------------------- drawing primitives


def _b(t: torch.Tensor) -> torch.Tensor:
    """[n] -> [n, 1, 1], to broadcast per-image values over a pixel grid."""
    return t.view(-1, 1, 1)


def _soft(signed_distance: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """Coverage of a shape from its (approximate) signed distance: negative inside."""
    return torch.sigmoid(-signed_distance / edge)


def _ellipse(
    u: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor | float,
    cv: torch.Tensor | float,
    ru: torch.Tensor | float,
    rv: torch.Tensor | float,
    edge: torch.Tensor,
) -> torch.Tensor:
    ru_t, rv_t = torch.as_tensor(ru), torch.as_tensor(rv)
    radius = torch.hypot((u - cu) / ru_t, (v - cv) / rv_t)
    return _soft((radius - 1) * torch.minimum(ru_t, rv_t), edge)


def _band(
    u: torch.Tensor,
    v: torch.Tensor,
    centre_v: torch.Tensor,
    half_width: torch.Tensor,
    half_thickness: torch.Tensor,
    edge: torch.Tensor,
) -> torch.Tensor:
    """A horizontal stroke following the curve ``centre_v(u)``, ``|u| < half_width``."""
    across = _soft((v - centre_v).abs() - half_thickness, edge)
    along = _soft(u.abs() - half_width, edge)
    return across * along


def _paint(canvas: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return canvas + (colour[:, :, None, None] - canvas) * mask.unsqueeze(1)


# --------------------------------------------------------------------------- face layers


class FaceCanvas:
    """One batch being drawn: face coordinates per pixel and the identity/nuisance parameters."""

    def __init__(self, ident: dict[str, torch.Tensor], nuis: dict[str, torch.Tensor], size: int) -> None:
        self.p, self.n = ident, nuis
        axis = (torch.arange(size, dtype=RENDER_DTYPE) + 0.5) / size * 2 - 1
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        cos, sin = _b(torch.cos(nuis["angle"])), _b(torch.sin(nuis["angle"]))
        dx, dy = x - _b(nuis["shift"][:, 0]), y - _b(nuis["shift"][:, 1])
        scale = _b(nuis["scale"]) * ZOOM
        self.x, self.y = x, y
        self.u = (cos * dx + sin * dy) / scale
        self.v = (-sin * dx + cos * dy) / scale - FACE_CENTRE_V
        self.edge = 0.75 * (2.0 / size) / scale  # about one render pixel of soft edge
        # Inner features move sideways with the head's yaw; the outline stays put.
        self.fu = self.u - _b(nuis["yaw"]) * 0.07 * _b(ident["face_a"]) / 0.45
        self.a, self.b = _b(ident["face_a"]), _b(ident["face_b"])

    def head_mask(self, grow: float = 0.0) -> torch.Tensor:
        a, b, p = self.a + grow, self.b + grow, _b(self.p["face_p"])
        radius = (((self.u / a).abs() ** p + (self.v / b).abs() ** p) + 1e-12) ** (1 / p)
        return _soft((radius - 1) * torch.minimum(a, b), self.edge)

    def shading(self) -> torch.Tensor:
        """Lambert-like shading of a sphere-ish head, continued smoothly over the background."""
        nu = (self.u / (self.a + 0.1)).clamp(-1, 1)
        nv = (self.v / (self.b + 0.1)).clamp(-1, 1)
        angle = _b(self.n["light_angle"])
        facing = torch.cos(angle) * nu + torch.sin(angle) * nv
        return 1.0 + _b(self.n["light_strength"]) * facing


def _background(c: FaceCanvas) -> torch.Tensor:
    grad = c.n["background_gradient"]
    ramp = (_b(grad[:, 0]) * c.x + _b(grad[:, 1]) * c.y).unsqueeze(1)
    return (c.n["background"][:, :, None, None] + ramp).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def _body(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    neck = _soft(torch.maximum(c.u.abs() - 0.16, -(c.v - 0.3)), c.edge)
    canvas = _paint(canvas, neck, c.p["skin"] * 0.85)
    shoulders = _ellipse(c.u, c.v, 0.0, 1.25, 0.85, 0.45, c.edge)
    return _paint(canvas, shoulders, c.n["clothes"])


def _back_hair(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    is_long = _b((c.p["hair_style"] == 2).float())
    falls = torch.maximum(torch.maximum(c.u.abs() - c.a - 0.1, c.v - 0.62), -0.2 - c.v)
    long_hair = _soft(falls, c.edge)
    long_hair = torch.maximum(long_hair, c.head_mask(0.1))
    return _paint(canvas, long_hair * is_long, c.p["hair"] * 0.85)


def _ears(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    ear_h = _b(c.p["ear_h"])
    ears = torch.maximum(
        _ellipse(c.u, c.v, -c.a, 0.02, 0.06, ear_h, c.edge), _ellipse(c.u, c.v, c.a, 0.02, 0.06, ear_h, c.edge)
    )
    return _paint(canvas, ears, c.p["skin"] * 0.92)


def _beard(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    style = _b(c.p["beard"])
    face = c.head_mask()
    full = face * _soft(0.2 - c.v, c.edge) * (style == 2)
    moustache = _band(
        c.fu,
        c.v,
        torch.full_like(c.v, 0.235) + 0.5 * c.fu**2,
        torch.full_like(c.v, 0.12),
        torch.full_like(c.v, 0.028),
        c.edge,
    ) * (style >= 1)
    return _paint(canvas, torch.maximum(full, moustache), c.p["hair"] * 0.8)


def _nose(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    length, half_w = _b(c.p["nose_len"]), _b(c.p["nose_w"])
    top = 0.17 - length
    along = (c.v - top) / length  # 0 at the bridge, 1 at the tip
    ridge = _soft(torch.maximum(c.fu.abs() - half_w * along.clamp(0.25, 1), (along - 0.5).abs() - 0.5), c.edge)
    nostrils = _ellipse(c.fu, c.v, 0.0, 0.17, half_w * 1.1, 0.03, c.edge)
    return _paint(canvas, torch.maximum(ridge * 0.5, nostrils * 0.75), c.p["skin"] * 0.55)


def _mouth(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    half_w = _b(c.p["mouth_w"])
    curve = 0.29 - _b(c.n["smile"]) * (half_w**2 - c.fu**2).clamp(min=0)
    thickness = _b(c.p["mouth_half"]) + _b(c.n["mouth_open"]) * 0.03
    lips = _band(c.fu, c.v, curve, half_w, thickness, c.edge)
    lip_colour = c.p["skin"] * torch.tensor([0.75, 0.42, 0.42])
    canvas = _paint(canvas, lips, lip_colour)
    gap = _band(c.fu, c.v, curve, half_w * 0.85, _b(c.n["mouth_open"]) * 0.025, c.edge)
    return _paint(canvas, gap, torch.full_like(lip_colour, 0.12))


def _eye_centres(c: FaceCanvas) -> list[torch.Tensor]:
    gap = _b(c.p["eye_gap"])
    return [-gap, gap]


def _eyes(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    rx, ry = _b(c.p["eye_rx"]), _b(c.p["eye_ry"]) * _b(c.n["eye_open"])
    sclera = torch.zeros_like(c.u)
    iris = torch.zeros_like(c.u)
    pupil = torch.zeros_like(c.u)
    for cu in _eye_centres(c):
        white = _ellipse(c.fu, c.v, cu, -0.02, rx, ry, c.edge)
        sclera = torch.maximum(sclera, white)
        iris = torch.maximum(iris, _ellipse(c.fu, c.v, cu, -0.02, rx * 0.62, rx * 0.62, c.edge) * white)
        pupil = torch.maximum(pupil, _ellipse(c.fu, c.v, cu, -0.02, rx * 0.22, rx * 0.22, c.edge) * white)
    canvas = _paint(canvas, sclera, torch.tensor([0.95, 0.95, 0.93]).expand(len(canvas), 3))
    canvas = _paint(canvas, iris, c.p["iris"])
    return _paint(canvas, pupil, torch.full_like(c.p["iris"], 0.05))


def _brows(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    half, arch = _b(c.p["brow_half"]), _b(c.p["brow_arch"])
    brows = torch.zeros_like(c.u)
    for cu in _eye_centres(c):
        du = c.fu - cu
        centre_v = -0.02 - _b(c.p["eye_ry"]) - 0.06 + arch * du**2
        brows = torch.maximum(brows, _band(du, c.v, centre_v, _b(c.p["eye_rx"]) * 1.15, half, c.edge))
    return _paint(canvas, brows, c.p["hair"] * 0.75)


def _mole(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    side = _b(c.p["mole"])
    mole = _ellipse(c.fu, c.v, side * 0.24, 0.14, 0.035, 0.035, c.edge) * (side != 0)
    return _paint(canvas, mole, c.p["skin"] * 0.3)


def _top_hair(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    style = _b(c.p["hair_style"])
    line = -c.b + _b(c.p["hairline"]) * 2 * c.b
    volume = torch.where(style == 3, 0.11, 0.05)
    # Curly hair: a bumpy outline; bald: hair on the sides only.
    bumps = torch.where(style == 3, 0.025 * torch.sin(18 * torch.atan2(c.v, c.u)), torch.zeros_like(c.u))
    cap = _soft(
        torch.maximum(
            (((c.u / (c.a + volume)) ** 2 + (c.v / (c.b + volume)) ** 2).sqrt() - 1) * c.a + bumps,
            c.v - line - 0.08 * (c.u / c.a) ** 2,
        ),
        c.edge,
    )
    bald = _soft(torch.maximum(0.8 * c.a - c.u.abs(), (c.v - line + 0.05).abs() - 0.12), c.edge) * c.head_mask(0.03)
    hair = torch.where(style == 0, bald, cap)
    return _paint(canvas, hair, c.p["hair"])


def _glasses(canvas: torch.Tensor, c: FaceCanvas) -> torch.Tensor:
    kind = _b(c.p["glasses"])
    rim = torch.zeros_like(c.u)
    lens = torch.zeros_like(c.u)
    radius = _b(c.p["eye_rx"]) + 0.04
    for cu in _eye_centres(c):
        dist = torch.hypot(c.fu - cu, c.v + 0.02)
        rim = torch.maximum(rim, _soft((dist - radius).abs() - 0.014, c.edge))
        lens = torch.maximum(lens, _soft(dist - radius, c.edge))
    bridge = _band(
        c.fu, c.v, torch.full_like(c.v, -0.03), _b(c.p["eye_gap"]) - radius, torch.full_like(c.v, 0.012), c.edge
    )
    frame = torch.maximum(rim, bridge) * (kind >= 1)
    canvas = _paint(canvas, lens * (kind == 2), torch.full((len(canvas), 3), 0.08))
    return _paint(canvas, frame, torch.full((len(canvas), 3), 0.1))


def _draw(c: FaceCanvas) -> torch.Tensor:
    canvas = _background(c)
    canvas = _body(canvas, c)
    canvas = _back_hair(canvas, c)
    canvas = _ears(canvas, c)
    canvas = _paint(canvas, c.head_mask(), c.p["skin"])
    for layer in (_beard, _nose, _mouth, _eyes, _brows, _mole, _top_hair, _glasses):
        canvas = layer(canvas, c)
    return canvas


def _finish(canvas: torch.Tensor, c: FaceCanvas, out_size: int, gen: torch.Generator) -> torch.Tensor:
    """Lighting, colour cast, downsampling, sensor noise; returns uint8."""
    lit = canvas * c.shading().unsqueeze(1)
    lit = lit * _b(c.n["brightness"]).unsqueeze(1) * c.n["tint"][:, :, None, None]
    small = F.interpolate(lit, size=(out_size, out_size), mode="area")
    small = small + _randn(*small.shape, gen=gen) * c.n["noise"].view(-1, 1, 1, 1)
    return (small.clamp(0, 1) * 255).round().to(torch.uint8)


def render_faces(combos: torch.Tensor, image_size: int, difficulty: float, gen: torch.Generator) -> torch.Tensor:
    """Render one image per row of attribute combinations: uint8 [n, 3, image_size, image_size]."""
    ident = _identity_params(combos)
    nuis = draw_nuisance(len(combos), difficulty, gen)
    c = FaceCanvas(ident, nuis, image_size * SUPERSAMPLE)
    return _finish(_draw(c), c, image_size, gen)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def render_identities(
    combos: torch.Tensor, per_identity: int, image_size: int, difficulty: float, gen: torch.Generator
) -> ImageSet:
    """``per_identity`` images of each identity (labels = row index of ``combos``)."""
    labels = torch.arange(len(combos)).repeat_interleave(per_identity)
    images = [render_faces(combos[labels[s]], image_size, difficulty, gen) for s in _batches(len(labels), RENDER_BATCH)]
    return ImageSet(torch.cat(images), labels)


def _attribute_table(combos: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: combos[:, i].clone() for i, name in enumerate(ATTRIBUTE_VALUES)}


def check_render_memory(cfg: DataConfig) -> None:
    """Fail before rendering when the images (and one supersampled render batch) cannot fit in memory."""
    count = cfg.num_identities * cfg.images_per_identity + cfg.num_public_identities * cfg.public_images_per_identity
    stored = count * 3 * cfg.image_size**2
    pixel_bytes = torch.finfo(RENDER_DTYPE).bits // 8
    batch = min(RENDER_BATCH, count) * 3 * (cfg.image_size * SUPERSAMPLE) ** 2 * pixel_bytes * RENDER_WORKING_TENSORS
    require_memory(
        stored + batch,
        f"data.image_size={cfg.image_size} for {count} images",
        "lower data.image_size or the number of images",
    )


def render_builtin(cfg: DataConfig) -> FaceData:
    """The built-in data set: private identities (train/test) and disjoint public identities."""
    check_render_memory(cfg)
    private, public = sample_identities(cfg.num_identities, cfg.num_public_identities, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = render_identities(private, cfg.images_per_identity, cfg.image_size, cfg.difficulty, gen)
    public_set = render_identities(public, cfg.public_images_per_identity, cfg.image_size, cfg.difficulty, gen)
    train_idx, test_idx = split_indices(images.labels, cfg.split, cfg.test_fraction, cfg.split_seed)
    data = FaceData(
        train=images.subset(train_idx),
        test=images.subset(test_idx),
        class_names=[f"id_{i:03d}" for i in range(cfg.num_identities)],
        public=public_set,
        attributes=_attribute_table(private),
        public_attributes=_attribute_table(public),
        attribute_cardinality=attribute_cardinality(),
        meta={
            "source": "builtin",
            "attribute_values": {k: list(v) for k, v in ATTRIBUTE_VALUES.items()},
            "seed": cfg.seed,
            "difficulty": cfg.difficulty,
            "image_size": cfg.image_size,
            **({"split": "ppa"} if cfg.split == "ppa" else {}),
        },
    )
    if cfg.split == "ppa":
        require_study_classes(data, "the built-in data under data.split=ppa")
    return data
