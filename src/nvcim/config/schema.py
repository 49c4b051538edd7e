"""The typed chip configuration tree: device, variability, mapping, array and circuit.

All classes are frozen dataclasses; construction validates every field (see :mod:`.fields`). Units are
SI: siemens (S) for conductance, seconds (s), ohms (Ω). Relative quantities say what they are
relative to. ``0`` means "off" (or "auto" where stated).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from ..registry import Registered
from .fields import check, spec
from .variants import Variant

MIN_ON_OFF = 1.001  # smallest g_max / g_min: float32 conductances resolve no narrower window
# the choices of these fields are the names in their registries (a model added in one file is allowed)
PROGRAMMING_MODELS = Registered("nvcim.devices", "PROGRAMMING_MODELS")
DRIFT_MODELS = Registered("nvcim.devices", "DRIFT_MODELS")
READ_NOISE_MODELS = Registered("nvcim.circuits", "READ_NOISE_MODELS")
ADC_MODELS = Registered("nvcim.circuits", "ADC_MODELS")
DAC_MODELS = Registered("nvcim.circuits", "DAC_MODELS")
MAPPINGS = Registered("nvcim.mapping", "MAPPINGS")


@dataclass(frozen=True)
class ProgrammingConfig(Variant):
    """Programming (write) variation, drawn once per chip: device-to-device, fixed until re-programmed.

    One class per model, each in its model's file with its own fields (``LognormalConfig`` in
    ``nvcim.devices.lognormal``, ...); ``model`` names it in files. The default is :class:`NoVariationConfig`.
    """

    TAG = "model"
    TAG_DOC = ("programming-variation model (nvcim.devices.PROGRAMMING_MODELS), each with its own fields; "
               "'measured' reads device.programming.table")
    REGISTRY = PROGRAMMING_MODELS
    LEGACY = {"sigma": 0.0, "level_sigma": (), "middle_factor": 1.0, "table": "", "correct_bias": False}
    model: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check(self)

    def check_device(self, device: DeviceConfig) -> None:
        """Raise a :class:`ConfigError` if this model cannot program ``device`` (e.g. it needs levels)."""

    @property
    def varies(self) -> bool:
        """Whether cells land off their targets, within a chip (the between-chip part is the variability's):
        for a model with a spread ``sigma``, when it is positive; models that vary otherwise say so."""
        return bool(getattr(self, "sigma", 0.0) > 0)


@dataclass(frozen=True)
class NoVariationConfig(ProgrammingConfig):
    """No programming variation: every cell lands on its target (``model = "none"``, the default)."""

    model: ClassVar[str] = "none"


@dataclass(frozen=True)
class FaultConfig:
    """Stuck-at faults, fixed per chip; they survive re-programming."""

    sa0: float = spec(0.0, "fraction of cells stuck at g_min (HRS)", unit="-", lo=0.0, hi=1.0)
    sa1: float = spec(0.0, "fraction of cells stuck at g_max (LRS)", unit="-", lo=0.0, hi=1.0)

    def __post_init__(self) -> None:
        check(self)
        if self.sa0 + self.sa1 > 1.0:
            raise ConfigError("sa1", self.sa1, f"[0, {1.0 - self.sa0:g}] so that sa0 + sa1 <= 1")


@dataclass(frozen=True)
class DriftConfig(Variant):
    """Power-law conductance drift G(t) = G(t0) (t/t0)^-nu with a drift exponent nu per cell, drawn by ``model``
    (one config class per law: :class:`PowerLawDriftConfig`, the default, or ``nvcim.devices.pcm``'s)."""

    TAG = "model"
    TAG_DOC = ("how nu is drawn (nvcim.devices.DRIFT_MODELS): 'power-law' (nu_mean, nu_std for every state) or "
               "'pcm' (mean and std from the target conductance, Joshi et al. 2020)")
    REGISTRY = DRIFT_MODELS
    LEGACY = {"nu_mean": 0.0, "nu_std": 0.0}
    model: ClassVar[str] = ""
    t0: float = spec(1.0, "time of the programming reference read", unit="s", lo=0.0, lo_open=True)
    t_read: float = spec(1.0, "time after programming at which inference runs", unit="s", lo=0.0, lo_open=True)
    compensate: bool = spec(False, "global drift compensation: rescale each layer by a factor measured "
                            "on a reference input")

    def __post_init__(self) -> None:
        check(self)
        if self.t_read < self.t0:
            raise ConfigError("t_read", self.t_read, f"[{self.t0:g}, inf) s (not before t0)")


@dataclass(frozen=True)
class PowerLawDriftConfig(DriftConfig):
    """nu ~ N(nu_mean, nu_std) per cell, clipped at 0: one law for every state (``model = "power-law"``)."""

    model: ClassVar[str] = "power-law"
    nu_mean: float = spec(0.0, "mean drift exponent", unit="-", lo=0.0, hi=1.0)
    nu_std: float = spec(0.0, "cell-to-cell std of the drift exponent", unit="-", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class DeviceConfig:
    """One memory cell: conductance range, levels, variation, read noise, faults, drift."""

    g_min: float = spec(1e-6, "lowest programmable conductance (HRS)", unit="S", lo=0.0, hi=1.0)
    g_max: float = spec(1e-4, "highest programmable conductance (LRS)", unit="S", lo=1e-12, hi=1.0)
    bits_per_cell: int = spec(4, "uniform levels per cell = 2^bits; 0 = continuous (analog)", unit="bit",
                              lo=1, hi=8, zero_ok=True)
    levels: tuple[float, ...] = spec((), "explicit level conductances, ascending (overrides bits_per_cell)",
                                     unit="S", lo=0.0)
    programming: ProgrammingConfig = field(default_factory=NoVariationConfig)
    read_noise: float = spec(0.0, "read noise std, drawn fresh at every read (cycle-to-cycle): a fraction of "
                             "G (read_noise_model 'proportional') or of g_max ('additive'); for 'pcm' a scale "
                             "of the fitted 1/f noise (1 = Joshi et al.)", unit="-", lo=0.0, hi=1.0)
    read_noise_model: str = spec("proportional", "read-noise model (nvcim.circuits.READ_NOISE_MODELS): "
                                 "'proportional' (std ~ G), 'additive' (a floor, std ~ g_max) or 'pcm' (1/f noise "
                                 "growing with the time since programming, Joshi et al. 2020)",
                                 choices=READ_NOISE_MODELS)
    faults: FaultConfig = field(default_factory=FaultConfig)
    drift: DriftConfig = field(default_factory=PowerLawDriftConfig)

    def __post_init__(self) -> None:
        check(self)
        if self.g_min * MIN_ON_OFF > self.g_max:  # float32 cannot resolve a narrower conductance window
            raise ConfigError("g_min", self.g_min, f"[0, {self.g_max / MIN_ON_OFF:g}] S, below g_max by an "
                              f"on/off ratio of at least {MIN_ON_OFF:g}")
        if self.levels:
            if len(self.levels) < 2:
                raise ConfigError("levels", list(self.levels), "at least 2 levels")
            if any(b <= a for a, b in zip(self.levels, self.levels[1:])):
                raise ConfigError("levels", list(self.levels), "strictly ascending conductances")
            if self.levels[0] < self.g_min * (1 - 1e-9) or self.levels[-1] > self.g_max * (1 + 1e-9):
                raise ConfigError("levels", list(self.levels), f"values within [g_min, g_max] = "
                                  f"[{self.g_min:g}, {self.g_max:g}] S")
        self.programming.check_device(self)

    @property
    def n_levels(self) -> int:
        """Number of programmable levels (0 = continuous)."""
        return len(self.levels) if self.levels else (2**self.bits_per_cell if self.bits_per_cell else 0)


@dataclass(frozen=True)
class VariabilityConfig:
    """Between-chip component of programming variation, in the unit of device.programming.sigma."""

    between_sigma: float = spec(0.0, "std of the component shared by all cells of a chip (or array)",
                                unit="-", lo=0.0, hi=10.0)
    scope: str = spec("chip", "what shares one between-chip draw", choices=("chip", "array"))

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class MappingConfig(Variant):
    """How signed weights become conductances: one config class per scheme (:class:`DifferentialConfig`, the
    default, or ``nvcim.mapping.offset``'s), named by ``scheme`` in files."""

    TAG = "scheme"
    TAG_DOC = "differential: w ~ G+ - G- (bit slicing possible); offset: w ~ G - G_ref (reference column)"
    REGISTRY = MAPPINGS
    LEGACY = {"weight_bits": 0}
    scheme: ClassVar[str] = ""
    scaling: str = spec("layer", "max|W| per layer or per output column maps onto the conductance range",
                        choices=("layer", "column"))
    clip_sigma: float = spec(0.0, "weight clipping: the full conductance range stands for clip_sigma x the RMS "
                             "of the layer's (or column's) weights, if that is below max|W|, and weights beyond "
                             "it are clipped (aihwkit's layer-Gaussian clip); a stuck-at-g_max cell then adds at "
                             "most that much error. 0 = off (max|W|)", unit="RMS of W", lo=0.5, hi=100.0,
                             zero_ok=True)

    def __post_init__(self) -> None:
        check(self)

    @property
    def slice_bits(self) -> int:
        """Signed weight bits spread over bit slices; 0 = one cell (or pair) per weight."""
        return 0


@dataclass(frozen=True)
class DifferentialConfig(MappingConfig):
    """Differential pairs, w ~ G+ - G- (``scheme = "differential"``), optionally bit-sliced."""

    scheme: ClassVar[str] = "differential"
    weight_bits: int = spec(0, "bit slicing: signed weight bits spread over cells of bits_per_cell bits; "
                            "0 = one cell per weight", unit="bit", lo=2, hi=16, zero_ok=True)

    @property
    def slice_bits(self) -> int:
        return self.weight_bits


IR_SOLVERS = ("exact", "first-order")  # array.ir_solver: nvcim.circuits.irdrop implements each


@dataclass(frozen=True)
class ArrayConfig:
    """Crossbar tiles and wires."""

    # a field of older files, read and dropped: the IR-drop model needs no input activity since 2026-12-07
    # (the wires are linear: one transfer matrix serves every input; nvcim.circuits.irdrop)
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {
        "ir_activity": (0.5, "the IR-drop model no longer assumes an input activity (it holds for every input)")}

    rows: int = spec(128, "rows (inputs) per crossbar tile; larger layers are split, partial sums "
                     "added digitally", unit="cells", lo=1, hi=65536)
    cols: int = spec(128, "columns (outputs) per crossbar tile", unit="cells", lo=1, hi=65536)
    wire_resistance: float = spec(0.0, "wire resistance per cell segment (IR drop on rows and columns)",
                                  unit="Ω", lo=0.0, hi=1e4)
    ir_solver: str = spec("exact", "IR drop's transfer matrix: 'exact' (Kirchhoff's equations by conjugate "
                          "gradients, within 1e-4 of a nodal solve) or 'first-order' (self-consistent, "
                          "cheaper, several % off on wide tiles: docs/benchmarks.md)",
                          choices=IR_SOLVERS)

    # enters experiment-store keys only through identity_extra (the IR model's name), so that points on
    # ideal wires keep the keys of before the field existed
    NOT_HASHED: ClassVar[tuple[str, ...]] = ("ir_solver",)

    def __post_init__(self) -> None:
        check(self)

    def identity_extra(self) -> dict[str, Any]:
        """What experiment-store keys hash beside the fields: the retired ``ir_activity`` at its old default
        where the wires are ideal (results unchanged, so older keys hold), the IR model's date where they
        are not (results changed, so older points are not resumed as if they were the same)."""
        if not self.wire_resistance:
            return {"ir_activity": 0.5}
        return {"ir_model": "self-consistent-2026-12-07" if self.ir_solver == "first-order" else
                "exact-cg-2026-12-07"}


@dataclass(frozen=True)
class DACConfig(Variant):
    """The row DAC's model (``circuit.dac``), with the settings of its own that a model has. The resolution
    and range, common to every DAC, are the circuit's (``circuit.dac_bits``, ``circuit.dac_range``)."""

    TAG = "model"
    TAG_DOC = ("DAC model (nvcim.circuits.DAC_MODELS): 'uniform' (signed codes for signed inputs, 2^b levels "
               "for non-negative ones) or 'symmetric' (always signed: aihwkit's)")
    REGISTRY = DAC_MODELS
    model: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class UniformDACConfig(DACConfig):
    """``circuit.dac.model = "uniform"`` (the default)."""

    model: ClassVar[str] = "uniform"


@dataclass(frozen=True)
class ADCConfig(Variant):
    """The column ADC's model (``circuit.adc``), with the settings of its own that a model has. The
    resolution, range, calibration and errors, common to every ADC, are the circuit's (``circuit.adc_*``)."""

    TAG = "model"
    TAG_DOC = ("ADC model (nvcim.circuits.ADC_MODELS): 'uniform' (mid-tread, rounds), 'midrise' (floors, "
               "reconstructs bin centres) or 'symmetric' (mid-tread, +-(2^(b-1)-1) codes: aihwkit's)")
    REGISTRY = ADC_MODELS
    model: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class UniformADCConfig(ADCConfig):
    """``circuit.adc.model = "uniform"`` (the default)."""

    model: ClassVar[str] = "uniform"


@dataclass(frozen=True)
class CircuitConfig:
    """Converters: DAC on the rows, ADC on every tile column."""

    # files from before the converters' typed sections wrote the models' names here
    MOVED: ClassVar[dict[str, tuple[str, str]]] = {"dac_model": ("dac", "model"), "adc_model": ("adc", "model")}
    dac_bits: int = spec(0, "input DAC resolution; 0 = ideal", unit="bit", lo=1, hi=16, zero_ok=True)
    dac: DACConfig = field(default_factory=UniformDACConfig)
    dac_range: float = spec(0.0, "input full scale in activation units; 0 = calibrate on data",
                            unit="activation", lo=1e-6, hi=1e6, zero_ok=True)
    adc_bits: int = spec(0, "column ADC resolution; 0 = ideal", unit="bit", lo=1, hi=16, zero_ok=True)
    adc: ADCConfig = field(default_factory=UniformADCConfig)
    adc_range: float = spec(0.0, "ADC full scale as a fraction of the largest possible tile column "
                            "signal (rows x (g_max-g_min) x input full scale); 0 = calibrate on data",
                            unit="-", lo=1e-6, hi=1.0, zero_ok=True)
    adc_percentile: float = spec(99.99, "calibration: percentile of |column signal| taken as ADC range",
                                 unit="%", lo=50.0, hi=100.0)
    adc_per_column: bool = spec(False, "calibrate one ADC range per column instead of per tile")
    adc_gain_sigma: float = spec(0.0, "ADC gain error std per column and chip, y -> (1+e_g) y",
                                 unit="-", lo=0.0, hi=1.0)
    adc_offset_sigma: float = spec(0.0, "ADC offset std per column and chip, as a fraction of the ADC range",
                                   unit="-", lo=0.0, hi=1.0)
    adc_range_cells: float = spec(0.0, "ADC full scale as the signal of this many fully-on cells at full-scale "
                                  "input, (g_max-g_min) x input full scale x adc_range_cells, the same for every "
                                  "layer (aihwkit's out_bound with weights scaled to the conductance range: 12); "
                                  "0 = adc_range or calibration", unit="cells", lo=1e-3, hi=1e6, zero_ok=True)
    input_scaling: str = spec("calibrated", "DAC full scale: 'calibrated' (one per layer, from data or dac_range) "
                              "or 'absmax' (per input vector and row tile: the vector's max |x|, undone digitally "
                              "after the ADC; aihwkit's noise management ABS_MAX)", choices=("calibrated", "absmax"))
    out_noise: float = spec(0.0, "additive Gaussian noise on every column output of every read, before the ADC: "
                            "std as a fraction of the ADC full scale (aihwkit's out_noise / out_bound, "
                            "0.06 / 12 = 0.005 by default)", unit="ADC full scale", lo=0.0, hi=1.0)
    bound_management: bool = spec(False, "when an output of a tile saturates the ADC, read that input vector "
                                  "again with the inputs halved (the output doubled digitally), until nothing "
                                  "saturates or two bits of input resolution remain (aihwkit's ITERATIVE bound "
                                  "management; needs adc_bits)")

    def __post_init__(self) -> None:
        check(self)
        if self.adc_range and self.adc_range_cells:
            raise ConfigError("adc_range_cells", self.adc_range_cells, "0 when adc_range is set (one ADC range)")
        if self.bound_management and not self.adc_bits:
            raise ConfigError("bound_management", self.bound_management,
                              "false when adc_bits = 0 (an ideal ADC never saturates)")

    @property
    def adc_model(self) -> str:
        """The ADC model's name."""
        return self.adc.model

    @property
    def dac_model(self) -> str:
        """The DAC model's name."""
        return self.dac.model

    @property
    def adc_key(self) -> str:
        """The ADC model and its own settings as one string (:meth:`Variant.key`): the compiled loops' key."""
        return self.adc.key()

    @property
    def dac_key(self) -> str:
        """The DAC model and its own settings as one string (:meth:`Variant.key`)."""
        return self.dac.key()

    @property
    def managed_io(self) -> bool:
        """Whether reads take the per-input-vector path (:mod:`nvcim.chip.managed_io`)."""
        return self.input_scaling != "calibrated" or bool(self.out_noise) or self.bound_management


@dataclass(frozen=True)
class CostConfig:
    """Per-operation constants of the closed-form energy/latency/area estimate (``nvcim.evaluation.hardware``).

    Defaults: ISAAC (Shafiee et al., ISCA 2016, 32 nm: 8-bit ADC at 1.28 GS/s, 2 mW, 0.0012 mm^2; 1-bit DACs
    4 mW / 1024, 0.00017 mm^2 / 1024; 128x128 crossbar read in 100 ns at 0.3 mW), Horowitz (ISSCC 2014,
    45 nm: 32-bit integer add 0.1 pJ, SRAM ~1.25 pJ/byte read), NeuroSim defaults (Peng et al., IEDM 2019:
    2 V, 10 ns write pulse) and Charan 2020 (an RRAM write-verify step takes >= 6.5 us).
    """

    feature_nm: float = spec(32.0, "technology feature size F; a cell occupies 4F^2", unit="nm", lo=1.0, hi=1000.0)
    adc_energy_pj: float = spec(1.56, "energy of one 8-bit ADC conversion; scales as 2^(bits-8)", unit="pJ",
                                lo=0.0)
    adc_area_mm2: float = spec(0.0012, "area of one 8-bit ADC; scales as 2^(bits-8)", unit="mm^2", lo=0.0)
    adc_rate_gsps: float = spec(1.28, "conversions per second of one ADC", unit="GS/s", lo=0.0, lo_open=True)
    adcs_per_array: int = spec(1, "ADCs per crossbar array, shared by its columns", unit="-", lo=1, hi=65536)
    dac_energy_fj: float = spec(0.39, "energy of one 1-bit DAC drive of a row; scales as 2^(bits-1)",
                                unit="fJ", lo=0.0)
    dac_area_um2: float = spec(0.17, "area of one 1-bit row DAC; scales as 2^(bits-1)", unit="um^2", lo=0.0)
    cell_read_energy_fj: float = spec(1.83, "energy per cell per array read (ISAAC: 0.3 mW x 100 ns / 128^2)",
                                      unit="fJ", lo=0.0)
    array_read_ns: float = spec(100.0, "time of one array read (row drive and settle)", unit="ns", lo=0.0,
                                lo_open=True)
    digital_add_pj: float = spec(0.1, "one 32-bit digital add (partial sums, shift-and-add)", unit="pJ", lo=0.0)
    sram_read_pj_per_byte: float = spec(1.25, "SRAM read energy per byte", unit="pJ", lo=0.0)
    sram_area_um2_per_byte: float = spec(1.2, "SRAM area per byte (6T cell ~0.15 um^2 per bit)", unit="um^2",
                                         lo=0.0)
    write_voltage: float = spec(2.0, "programming pulse amplitude", unit="V", lo=0.0, hi=10.0)
    write_pulse_ns: float = spec(10.0, "programming pulse width; pulse energy = V^2 g_max t", unit="ns", lo=0.0)
    write_step_us: float = spec(6.5, "time of one program-and-verify step of one cell", unit="us", lo=0.0)
    unmodelled_adc_bits: int = spec(8, "ADC bits costed when circuit.adc_bits = 0 (ideal in simulation)",
                                    unit="bit", lo=1, hi=16)
    unmodelled_dac_bits: int = spec(8, "DAC bits costed when circuit.dac_bits = 0", unit="bit", lo=1, hi=16)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class ChipConfig:
    """A whole chip: what the ``--chip`` option and :func:`nvcim.preset` describe."""

    name: str = spec("custom", "short name of this chip config")
    source: str = spec("", "citation for the values (required for presets)")
    device: DeviceConfig = field(default_factory=DeviceConfig)
    variability: VariabilityConfig = field(default_factory=VariabilityConfig)
    mapping: MappingConfig = field(default_factory=DifferentialConfig)
    array: ArrayConfig = field(default_factory=ArrayConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    cost: CostConfig = field(default_factory=CostConfig)

    def __post_init__(self) -> None:
        check(self)
        m, d = self.mapping, self.device
        if m.slice_bits and (d.levels or d.bits_per_cell == 0):
            raise ConfigError("mapping.weight_bits", m.slice_bits, "0 when the device has explicit or "
                              "continuous levels (bit slicing needs 2^bits_per_cell uniform levels)")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples), the form written to TOML/YAML/JSON; a typed section writes
        its ``model``/``scheme`` name first and then its own fields."""
        return _plain(self, legacy=False)

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with typed sections in the flat shape of before the split (every model's fields,
        the others at their defaults): what experiment-store keys hash, so that older stores' keys hold."""
        return _plain(self, legacy=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChipConfig:
        """Build and validate from a nested dict; unknown keys and bad values name their dotted path."""
        return _build(cls, data, "")


def _plain(obj: Any, legacy: bool) -> Any:
    if isinstance(obj, Variant):
        d = obj.legacy_dict() if legacy else obj.as_dict()
        return {k: _plain(v, legacy) for k, v in d.items()}
    if dataclasses.is_dataclass(obj):
        out = {f.name: _plain(getattr(obj, f.name), legacy) for f in dataclasses.fields(obj)}
        if legacy and hasattr(obj, "identity_extra"):
            for name in getattr(obj, "NOT_HASHED", ()):
                del out[name]
            out.update(obj.identity_extra())
        for old, (section, tag) in getattr(obj, "MOVED", {}).items() if legacy else ():
            out[old] = out[section][tag]  # the flat key of before, and the section only for its own fields
            if len(out[section]) == 1:
                del out[section]
        return out
    return list(obj) if isinstance(obj, tuple) else obj


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", data, "a table (mapping of fields)")
    if issubclass(cls, Variant):  # the model's own class, named by its tag (else the default's)
        cls, data = cls.choose(data, prefix)
    for old, (section, tag) in getattr(cls, "MOVED", {}).items():  # a flat key of older files
        if old in data:
            data = dict(data)
            inner = data.get(section, {})
            if isinstance(inner, dict) and tag in inner:
                raise ConfigError(f"{prefix}.{old}" if prefix else old, data[old],
                                  f"absent when {section}.{tag} is set (one of the two)")
            data[section] = {**inner, tag: data.pop(old)} if isinstance(inner, dict) else inner
    retired = getattr(cls, "RETIRED", {})
    if any(key in data for key in retired):
        import warnings

        for key in [k for k in data if k in retired and data[k] != retired[k][0]]:  # a choice, now ignored
            warnings.warn(f"{prefix + '.' if prefix else ''}{key} = {data[key]!r} is no longer used and was "
                          f"ignored: {retired[key][1]}", UserWarning, stacklevel=2)
        data = {k: v for k, v in data.items() if k not in retired}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, val in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if not isinstance(key, str):  # YAML allows numbers, nulls and lists as keys
            raise ConfigError(path, val, "a table whose keys are field names: " + ", ".join(fields))
        if key not in fields:
            import difflib

            near = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(path, val, "a known field: " + ", ".join(fields),
                              f"Did you mean '{near[0]}'?" if near else "")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        kwargs[key] = _build(type(default), val, path) if dataclasses.is_dataclass(default) else val
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not e.path.startswith(prefix + "."):
            raise e.under(prefix) from None
        raise
