"""Collection-level vector codecs: fitted on a sample, applied to every vector, one spec string.

A codec is a linear reduction (optional), a quantizer, and an optional exact re-rank, written
as one spec that round-trips, in the spirit of faiss's ``index_factory``:

* reduction, LeanVec-style (Tuktu et al., TMLR 2024): ``PCA<d>``, in-distribution: the top
  ``d`` eigenvectors of the items' second-moment matrix (centred for ``squared_l2``); ``OOD<d>``,
  out-of-distribution: a query projection A and a data projection B fitted on the items and a
  sample of queries together, minimising E[(q.x - (A'q).(B'x))^2]. Its closed form: with
  Kx, Kq the second moments, V the top right singular vectors of Kq^1/2 Kx^1/2, A = Kx^1/2 V
  and B = Kx^-1/2 V (it is PCA when queries look like the items);
* quantizer: ``F32`` (none), ``F16``, ``SQ8`` (per dimension, 256 levels over the range fitted
  on the sample: error at most range/510 inside it) or ``PQ<m>`` (m sub-spaces x 256 centroids);
* ``Rerank``: shards also keep the full-precision vectors, in a separate file read lazily, to
  re-score the final candidates exactly.

``PCA24,SQ8,Rerank`` is a 24-d projection, 8-bit codes and an exact re-rank: 24 bytes a vector
in the searched index. :meth:`Codec.fit` fits one on a sample; :meth:`Codec.encode` and
:meth:`Codec.decode` apply it; :meth:`Codec.save` writes ``codec.json`` and one ``.npy`` per
array (no pickle), :meth:`Codec.load` reads and checks them (CodecError on anything wrong).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re

import numpy as np

from beamvec.index import exact, fs, kmeans

FORMAT = "beamvec.codec"
FORMAT_VERSION = 1
HEADER = "codec.json"
QUANTIZERS = ("F32", "F16", "SQ8", "PQ")
REDUCTIONS = ("PCA", "OOD")
# Centroids per product-quantization sub-space (one byte a code).
PQ_CENTROIDS = 256
# Rows each PQ sub-space trains its centroids on (64 per centroid; faiss asks for at least 39).
PQ_TRAINING_ROWS = 64 * PQ_CENTROIDS
# Rows encoded at once by PQ (bounds its distance matrix).
_PQ_BLOCK = 16_384
# Eigenvalues below this share of the largest are floored when the OOD projection whitens.
_EIGEN_FLOOR = 1e-6
_TOKEN = re.compile(r"(pca|ood|pq)(\d+)|(f32|f16|sq8|rerank)", re.IGNORECASE)


class CodecError(ValueError):
    """A codec spec, fit or saved codec cannot be used: the message says which and why."""


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """What a codec does, as the spec string :meth:`text` writes and :meth:`parse` reads."""

    reduction: str = ""
    reduced_dimension: int = 0
    quantizer: str = "F32"
    subspaces: int = 0
    rerank: bool = False

    def text(self) -> str:
        """The spec string, e.g. ``PCA48,SQ8``, ``PQ24``, ``F16``, ``OOD24,SQ8,Rerank``."""
        parts = [f"{self.reduction}{self.reduced_dimension}"] if self.reduction else []
        if self.quantizer != "F32" or not parts:
            parts.append(f"PQ{self.subspaces}" if self.quantizer == "PQ" else self.quantizer)
        return ",".join(parts + (["Rerank"] if self.rerank else []))

    @classmethod
    def parse(cls, text: str) -> "CodecSpec":
        """The spec ``text`` names; CodecError naming the expected form otherwise."""
        expected = ("expected [PCA<d>|OOD<d>,][F32|F16|SQ8|PQ<m>][,Rerank], e.g. 'SQ8', 'PCA48,SQ8', "
                    "'PQ24', 'OOD24,SQ8,Rerank'")
        tokens = [t.strip() for t in str(text).split(",")]
        fields: dict = {}
        last = -1  # reduction, quantizer, rerank: in this order, each at most once
        for token in tokens:
            m = _TOKEN.fullmatch(token)
            if not m:
                raise CodecError(f"bad codec spec {text!r}: unknown part {token!r}; {expected}")
            name = (m[1] or m[3]).upper()
            at = 0 if name in REDUCTIONS else 2 if name == "RERANK" else 1
            if at <= last:
                raise CodecError(f"bad codec spec {text!r}: {token!r} is out of place; {expected}")
            last = at
            number = int(m[2]) if m[2] else 0
            if m[2] and number < 1:
                raise CodecError(f"bad codec spec {text!r}: {token!r} needs a positive number")
            if at == 0:
                fields.update(reduction=name, reduced_dimension=number)
            elif at == 1:
                fields.update(quantizer=name, subspaces=number)
            else:
                fields["rerank"] = True
        return cls(**fields)

    def code_dimension(self, dimension: int) -> int:
        """The dimension codes live in: the reduced one, or the vectors'."""
        return self.reduced_dimension if self.reduction else dimension

    def bytes_per_vector(self, dimension: int) -> int:
        """Bytes of one vector's code."""
        d = self.code_dimension(dimension)
        return {"F32": 4 * d, "F16": 2 * d, "SQ8": d, "PQ": self.subspaces}[self.quantizer]

    def check(self, dimension: int, metric: str) -> "CodecSpec":
        """This spec, or CodecError when it cannot apply to vectors of ``dimension`` under ``metric``."""
        exact.check_metric(metric)
        d = self.code_dimension(dimension)
        if self.reduction and not 0 < self.reduced_dimension < dimension:
            raise CodecError(f"codec {self.text()}: {self.reduction} must reduce the dimension, "
                             f"{self.reduced_dimension} is not below {dimension}")
        if self.reduction == "OOD" and metric == "squared_l2":
            raise CodecError(f"codec {self.text()}: the out-of-distribution projection approximates inner "
                             "products; use PCA with squared_l2")
        if self.quantizer == "PQ" and (self.subspaces > d or d % self.subspaces):
            raise CodecError(f"codec {self.text()}: PQ{self.subspaces} must divide the code dimension {d} "
                             "into equal sub-spaces")
        return self


class Codec:
    """A fitted codec: its spec, the metric and dimension it was fitted for, and its arrays.

    Consumes vectors (n, dimension) as given (prepared for the metric inside: unit-normalised for
    cosine); emits codes (n, code width) of ``code_dtype``. ``decode`` gives float32 vectors in the
    code space, where queries are compared after :meth:`reduce_queries`.
    """

    def __init__(self, spec: CodecSpec, metric: str, dimension: int, arrays: dict[str, np.ndarray]):
        self.spec = spec.check(dimension, metric)
        self.metric = metric
        self.dimension = dimension
        self.arrays = arrays

    @property
    def code_dimension(self) -> int:
        return self.spec.code_dimension(self.dimension)

    @property
    def bytes_per_vector(self) -> int:
        return self.spec.bytes_per_vector(self.dimension)

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype({"F32": np.float32, "F16": np.float16}.get(self.spec.quantizer, np.uint8))

    @property
    def code_width(self) -> int:
        """Code values per vector (bytes per vector / the dtype's size)."""
        return self.bytes_per_vector // self.code_dtype.itemsize

    @classmethod
    def fit(cls, spec: CodecSpec | str, vectors: np.ndarray, metric: str = "dot_product",
            queries: np.ndarray | None = None, seed: int = 0) -> "Codec":
        """Fit ``spec`` on a sample of ``vectors`` (n, d); ``OOD`` also needs ``queries`` (m, d), a
        sample of the queries the index will answer. The same input and seed give the same codec."""
        spec = CodecSpec.parse(spec) if isinstance(spec, str) else spec
        vectors = exact.prepare(np.asarray(vectors), metric)
        if vectors.ndim != 2 or not len(vectors):
            raise CodecError(f"a codec is fitted on a non-empty (n, d) sample, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise CodecError("the codec's sample holds NaN or infinite values")
        dimension = vectors.shape[1]
        spec.check(dimension, metric)
        arrays = _fit_reduction(spec, vectors, metric, queries, dimension)
        codec = cls(spec, metric, dimension, arrays)
        reduced = codec.reduce(vectors, prepared=True)
        if spec.quantizer == "SQ8":
            low, high = reduced.min(axis=0), reduced.max(axis=0)
            arrays["low"] = low.astype(np.float32)
            arrays["step"] = np.where(high > low, (high - low) / 255, 1).astype(np.float32)
        elif spec.quantizer == "PQ":
            width = codec.code_dimension // spec.subspaces
            train = reduced if len(reduced) <= PQ_TRAINING_ROWS else reduced[np.sort(
                np.random.default_rng([seed, 17]).choice(len(reduced), PQ_TRAINING_ROWS, replace=False))]
            arrays["centroids"] = np.stack([
                _centroids(train[:, j * width:(j + 1) * width], seed + j) for j in range(spec.subspaces)])
        return codec

    def reduce(self, vectors: np.ndarray, prepared: bool = False) -> np.ndarray:
        """Vectors in the code space (float32, (n, code dimension)), before quantization."""
        x = vectors if prepared else exact.prepare(np.asarray(vectors), self.metric)
        if not self.spec.reduction:
            return np.ascontiguousarray(x, np.float32)
        if "mean" in self.arrays:
            x = x - self.arrays["mean"]
        return np.ascontiguousarray(x @ self.arrays["data_projection"], np.float32)

    def reduce_queries(self, queries: np.ndarray, prepared: bool = False) -> np.ndarray:
        """Queries in the code space: their scores against :meth:`decode` d vectors approximate the
        metric's scores against the vectors."""
        q = queries if prepared else exact.prepare(np.asarray(queries), self.metric)
        if not self.spec.reduction:
            return np.ascontiguousarray(q, np.float32)
        if "mean" in self.arrays:
            q = q - self.arrays["mean"]
        return np.ascontiguousarray(q @ self.arrays["query_projection"], np.float32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes of ``vectors`` (n, dimension): (n, :attr:`code_width`) of :attr:`code_dtype`."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise CodecError(f"codec {self.spec.text()} encodes vectors of dimension {self.dimension}, "
                             f"got shape {vectors.shape}")
        x = self.reduce(vectors)
        q = self.spec.quantizer
        if q == "F32":
            return x
        if q == "F16":
            if np.abs(x).max(initial=0) > np.finfo(np.float16).max:
                raise CodecError(f"codec {self.spec.text()}: values beyond float16's range")
            return x.astype(np.float16)
        if q == "SQ8":
            codes = np.rint((x - self.arrays["low"]) / self.arrays["step"])
            return np.clip(codes, 0, 255).astype(np.uint8)
        centroids = self.arrays["centroids"]
        m, _, width = centroids.shape
        codes = np.empty((len(x), m), np.uint8)
        for lo in range(0, len(x), _PQ_BLOCK):
            block = x[lo:lo + _PQ_BLOCK]
            for j in range(m):
                codes[lo:lo + len(block), j] = kmeans.assign(block[:, j * width:(j + 1) * width], centroids[j])
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Vectors in the code space (float32) from their codes."""
        q = self.spec.quantizer
        if q == "F16":
            from beamvec.index.codes import decode_f16

            return decode_f16(codes)
        if q == "F32":
            return np.ascontiguousarray(codes, np.float32)
        if q == "SQ8":
            out = np.multiply(codes, self.arrays["step"], dtype=np.float32)
            out += self.arrays["low"]
            return out
        centroids = self.arrays["centroids"]
        m = centroids.shape[0]
        return centroids[np.arange(m), np.asarray(codes, np.intp)].reshape(len(codes), self.code_dimension)

    # -- saved form ---------------------------------------------------------------------------

    def header(self) -> dict:
        """``codec.json``: format, spec, metric, dimension, and each array's shape, dtype and sha256."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "spec": self.spec.text(), "metric": self.metric,
                "dimension": self.dimension,
                "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _sha(npy_bytes(a))}
                           for name, a in sorted(self.arrays.items())}}

    @property
    def checksum(self) -> str:
        """SHA-256 of the header (which holds every array's digest): the codec's identity."""
        return "sha256:" + _sha(json.dumps(self.header(), sort_keys=True).encode())

    def save(self, path: str) -> None:
        """Write ``codec.json`` and one ``<array>.npy`` per array into directory ``path`` (any filesystem)."""
        filesystem = fs.filesystem_for(path)
        filesystem.makedirs(path)
        for name, a in sorted(self.arrays.items()):
            filesystem.write_bytes(filesystem.join(path, f"{name}.npy"), npy_bytes(a))
        filesystem.write_bytes(filesystem.join(path, HEADER), json.dumps(self.header(), indent=2, sort_keys=True).encode())

    @classmethod
    def load(cls, path: str) -> "Codec":
        """The codec saved in directory ``path``; CodecError on a missing, corrupted or foreign file."""
        filesystem = fs.filesystem_for(path)
        head_path = filesystem.join(path, HEADER)
        if not filesystem.exists(head_path):
            raise CodecError(f"{path}: no {HEADER} (not a saved codec)")
        try:
            head = json.loads(filesystem.read_bytes(head_path))
        except ValueError as e:
            raise CodecError(f"{head_path}: not valid JSON: {e}") from e
        if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != FORMAT_VERSION:
            raise CodecError(f"{head_path}: not a {FORMAT} version {FORMAT_VERSION} header")
        arrays = {}
        try:
            described = dict(head["arrays"])
            for name, info in described.items():
                if not re.fullmatch(r"[a-z_]+", name):
                    raise CodecError(f"{head_path}: bad array name {name!r}")
                data = filesystem.read_bytes(filesystem.join(path, f"{name}.npy"))
                if _sha(data) != info["sha256"]:
                    raise CodecError(f"{path}: {name}.npy does not match its checksum in {HEADER} (corrupted)")
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
            codec = cls(CodecSpec.parse(head["spec"]), str(head["metric"]), int(head["dimension"]), arrays)
        except CodecError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise CodecError(f"{path}: cannot read the codec: {e}") from e
        _check_arrays(codec, path)
        return codec


def _fit_reduction(spec: CodecSpec, vectors: np.ndarray, metric: str, queries: np.ndarray | None,
                   dimension: int) -> dict[str, np.ndarray]:
    """The projections (d, d') of ``spec``'s reduction (and the mean, for squared_l2); {} for none."""
    if not spec.reduction:
        return {}
    d = spec.reduced_dimension
    x = vectors.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    if metric == "squared_l2":
        mean = x.mean(axis=0)
        out["mean"] = mean.astype(np.float32)
        x = x - mean
    kx = x.T @ x / len(x)
    if spec.reduction == "PCA":
        vecs = _top_eigenvectors(kx, d)
        out["data_projection"] = out["query_projection"] = vecs.astype(np.float32)
        return out
    if queries is None or not len(queries):
        raise CodecError(f"codec {spec.text()}: the out-of-distribution projection is fitted on query vectors "
                         "too; give a workload log with vectors (or use PCA)")
    q = exact.prepare(np.asarray(queries), metric).astype(np.float64)
    if q.ndim != 2 or q.shape[1] != dimension or not np.isfinite(q).all():
        raise CodecError(f"codec {spec.text()}: query sample of shape {q.shape} with finite values needed, "
                         f"dimension {dimension}")
    kq = q.T @ q / len(q)
    half_x, inv_half_x = _sqrt_and_inverse(kx)
    half_q, _ = _sqrt_and_inverse(kq)
    _, _, vt = np.linalg.svd(half_q @ half_x)
    v = _fix_signs(vt[:d].T)
    out["query_projection"] = (half_x @ v).astype(np.float32)
    out["data_projection"] = (inv_half_x @ v).astype(np.float32)
    return out


def _top_eigenvectors(matrix: np.ndarray, count: int) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return _fix_signs(vectors[:, np.argsort(-values, kind="stable")[:count]])


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Columns with their largest entry positive: the same basis on every machine."""
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    return vectors * np.where(signs == 0, 1, signs)


def _sqrt_and_inverse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric square root of a second-moment matrix and its inverse (small eigenvalues floored)."""
    values, vectors = np.linalg.eigh(matrix)
    values = np.maximum(values, _EIGEN_FLOOR * max(float(values.max()), 1e-30))
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T


def _centroids(rows: np.ndarray, seed: int) -> np.ndarray:
    """``PQ_CENTROIDS`` centroids of a sub-space (fewer distinct rows: repeated, so codes stay one byte)."""
    centroids = kmeans.fit(rows, PQ_CENTROIDS, seed)
    if len(centroids) < PQ_CENTROIDS:
        centroids = np.concatenate([centroids, np.repeat(centroids[-1:], PQ_CENTROIDS - len(centroids), axis=0)])
    return centroids.astype(np.float32)


def _check_arrays(codec: Codec, path: str) -> None:
    """CodecError unless the arrays have the shapes the spec needs."""
    d, c = codec.dimension, codec.code_dimension
    need: dict[str, tuple[int, ...]] = {}
    if codec.spec.reduction:
        need.update(data_projection=(d, c), query_projection=(d, c))
        if codec.metric == "squared_l2":
            need["mean"] = (d,)
    if codec.spec.quantizer == "SQ8":
        need.update(low=(c,), step=(c,))
    if codec.spec.quantizer == "PQ":
        need["centroids"] = (codec.spec.subspaces, PQ_CENTROIDS, c // codec.spec.subspaces)
    got = {name: tuple(a.shape) for name, a in codec.arrays.items()}
    if got != need or any(a.dtype != np.float32 for a in codec.arrays.values()):
        raise CodecError(f"{path}: arrays {got} do not fit codec {codec.spec.text()} (expected float32 {need})")


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of its ``.npy`` file (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CODEC_DIR = "codec"


def fit_sample(spec: "CodecSpec | str", ids, vectors: np.ndarray, metric: str, queries: np.ndarray | None = None,
               seed: int = 0, sample_rows: int = 50_000) -> Codec:
    """:meth:`Codec.fit` on the ``sample_rows`` items with the smallest id hashes (a Beam build's sample)."""
    import pyarrow as pa

    from beamvec.index.hashing import smallest_hashes

    ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids))
    return Codec.fit(spec, np.asarray(vectors)[smallest_hashes(ids, sample_rows)], metric, queries, seed)


def save_in_index(index_path: str, codec: Codec) -> dict:
    """Save ``codec`` in the index directory; return the manifest's ``codec`` entry."""
    filesystem = fs.filesystem_for(index_path)
    codec.save(filesystem.join(index_path, CODEC_DIR))
    return {"spec": codec.spec.text(), "path": CODEC_DIR, "checksum": codec.checksum}


def parse_codec(spec: str | None) -> CodecSpec | None:
    """A codec spec from user input: None for no codec ('' or 'none'), else :meth:`CodecSpec.parse`."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    return CodecSpec.parse(spec)
