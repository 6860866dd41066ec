from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetaValue(_message.Message):
    __slots__ = ("text", "integer", "flag", "raw")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    text: str
    integer: int
    flag: bool
    raw: bytes
    def __init__(self, text: _Optional[str] = ..., integer: _Optional[int] = ..., flag: _Optional[bool] = ..., raw: _Optional[bytes] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: MetaValue
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetaValue, _Mapping]] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("namespace", "payload_kind", "payload_size", "metadata", "base_id", "signed_entry")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    BASE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNED_ENTRY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    payload_kind: str
    payload_size: int
    metadata: _containers.RepeatedCompositeFieldContainer[KeyValue]
    base_id: bytes
    signed_entry: bytes
    def __init__(self, namespace: _Optional[str] = ..., payload_kind: _Optional[str] = ..., payload_size: _Optional[int] = ..., metadata: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., base_id: _Optional[bytes] = ..., signed_entry: _Optional[bytes] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("entry_id", "payload_digest", "already_present", "author", "seq", "erased")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    entry_id: bytes
    payload_digest: bytes
    already_present: bool
    author: bytes
    seq: int
    erased: bool
    def __init__(self, entry_id: _Optional[bytes] = ..., payload_digest: _Optional[bytes] = ..., already_present: _Optional[bool] = ..., author: _Optional[bytes] = ..., seq: _Optional[int] = ..., erased: _Optional[bool] = ...) -> None: ...

class SubmitEntryRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    def __init__(self, entry: _Optional[bytes] = ...) -> None: ...

class SubmitEntryReply(_message.Message):
    __slots__ = ("entry_id", "status")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    entry_id: bytes
    status: str
    def __init__(self, entry_id: _Optional[bytes] = ..., status: _Optional[str] = ...) -> None: ...

class ChainHeadRequest(_message.Message):
    __slots__ = ("author",)
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    author: bytes
    def __init__(self, author: _Optional[bytes] = ...) -> None: ...

class ChainHeadReply(_message.Message):
    __slots__ = ("author", "next_seq", "prev")
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    author: bytes
    next_seq: int
    prev: bytes
    def __init__(self, author: _Optional[bytes] = ..., next_seq: _Optional[int] = ..., prev: _Optional[bytes] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("namespace", "include_removed", "author")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    include_removed: bool
    author: bytes
    def __init__(self, namespace: _Optional[str] = ..., include_removed: _Optional[bool] = ..., author: _Optional[bytes] = ...) -> None: ...

class EntrySummary(_message.Message):
    __slots__ = ("id", "kind", "namespace", "author", "seq", "payload_digest", "payload_size", "metadata", "removed", "payload_kind", "base_id", "author_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_NAME_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    kind: str
    namespace: str
    author: bytes
    seq: int
    payload_digest: bytes
    payload_size: int
    metadata: _containers.RepeatedCompositeFieldContainer[KeyValue]
    removed: bool
    payload_kind: str
    base_id: bytes
    author_name: str
    def __init__(self, id: _Optional[bytes] = ..., kind: _Optional[str] = ..., namespace: _Optional[str] = ..., author: _Optional[bytes] = ..., seq: _Optional[int] = ..., payload_digest: _Optional[bytes] = ..., payload_size: _Optional[int] = ..., metadata: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., removed: _Optional[bool] = ..., payload_kind: _Optional[str] = ..., base_id: _Optional[bytes] = ..., author_name: _Optional[str] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[EntrySummary]
    def __init__(self, entries: _Optional[_Iterable[_Union[EntrySummary, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id", "summary_only")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_ONLY_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    summary_only: bool
    def __init__(self, id: _Optional[bytes] = ..., summary_only: _Optional[bool] = ...) -> None: ...

class GetChunk(_message.Message):
    __slots__ = ("entry", "data")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    entry: EntrySummary
    data: bytes
    def __init__(self, entry: _Optional[_Union[EntrySummary, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EraseRequest(_message.Message):
    __slots__ = ("ids", "author", "reason", "signed_removal")
    IDS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNED_REMOVAL_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    author: bytes
    reason: str
    signed_removal: bytes
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ..., author: _Optional[bytes] = ..., reason: _Optional[str] = ..., signed_removal: _Optional[bytes] = ...) -> None: ...

class EraseReply(_message.Message):
    __slots__ = ("removal_id", "erased")
    REMOVAL_ID_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    removal_id: bytes
    erased: int
    def __init__(self, removal_id: _Optional[bytes] = ..., erased: _Optional[int] = ...) -> None: ...

class MaterialiseRequest(_message.Message):
    __slots__ = ("namespace", "strategy", "params", "out_path", "dtype", "format", "provenance", "round")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUT_PATH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    strategy: str
    params: _containers.RepeatedCompositeFieldContainer[Param]
    out_path: str
    dtype: str
    format: str
    provenance: bool
    round: int
    def __init__(self, namespace: _Optional[str] = ..., strategy: _Optional[str] = ..., params: _Optional[_Iterable[_Union[Param, _Mapping]]] = ..., out_path: _Optional[str] = ..., dtype: _Optional[str] = ..., format: _Optional[str] = ..., provenance: _Optional[bool] = ..., round: _Optional[int] = ...) -> None: ...

class Param(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Excluded(_message.Message):
    __slots__ = ("author", "reason", "entries")
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    author: bytes
    reason: str
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, author: _Optional[bytes] = ..., reason: _Optional[str] = ..., entries: _Optional[_Iterable[bytes]] = ...) -> None: ...

class MaterialiseResult(_message.Message):
    __slots__ = ("output_sha256", "input_set_digest", "inputs", "excluded", "strategy", "params_json", "out_path", "size", "cached", "seconds", "kind", "format", "summary_json", "provenance_sha256", "provenance_format", "provenance_path")
    OUTPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUT_PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_PATH_FIELD_NUMBER: _ClassVar[int]
    output_sha256: str
    input_set_digest: str
    inputs: _containers.RepeatedScalarFieldContainer[bytes]
    excluded: _containers.RepeatedCompositeFieldContainer[Excluded]
    strategy: str
    params_json: str
    out_path: str
    size: int
    cached: bool
    seconds: float
    kind: str
    format: str
    summary_json: str
    provenance_sha256: str
    provenance_format: str
    provenance_path: str
    def __init__(self, output_sha256: _Optional[str] = ..., input_set_digest: _Optional[str] = ..., inputs: _Optional[_Iterable[bytes]] = ..., excluded: _Optional[_Iterable[_Union[Excluded, _Mapping]]] = ..., strategy: _Optional[str] = ..., params_json: _Optional[str] = ..., out_path: _Optional[str] = ..., size: _Optional[int] = ..., cached: _Optional[bool] = ..., seconds: _Optional[float] = ..., kind: _Optional[str] = ..., format: _Optional[str] = ..., summary_json: _Optional[str] = ..., provenance_sha256: _Optional[str] = ..., provenance_format: _Optional[str] = ..., provenance_path: _Optional[str] = ...) -> None: ...

class MaterialiseChunk(_message.Message):
    __slots__ = ("result", "data", "provenance")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    result: MaterialiseResult
    data: bytes
    provenance: bytes
    def __init__(self, result: _Optional[_Union[MaterialiseResult, _Mapping]] = ..., data: _Optional[bytes] = ..., provenance: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("name", "address", "key_id", "alive", "in_sync", "seconds_since_sync", "revoked")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_SYNC_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    key_id: bytes
    alive: bool
    in_sync: bool
    seconds_since_sync: float
    revoked: bool
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., key_id: _Optional[bytes] = ..., alive: _Optional[bool] = ..., in_sync: _Optional[bool] = ..., seconds_since_sync: _Optional[float] = ..., revoked: _Optional[bool] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node_id", "node_name", "federation_id", "state_root", "entry_counts", "peers", "version", "uptime_seconds", "peer_address", "client_address", "metrics_address", "namespaces", "namespace_status", "health_address")
    class EntryCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_ROOT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_STATUS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: bytes
    node_name: str
    federation_id: str
    state_root: bytes
    entry_counts: _containers.ScalarMap[str, int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    version: str
    uptime_seconds: float
    peer_address: str
    client_address: str
    metrics_address: str
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    namespace_status: _containers.RepeatedCompositeFieldContainer[NamespaceStatus]
    health_address: str
    def __init__(self, node_id: _Optional[bytes] = ..., node_name: _Optional[str] = ..., federation_id: _Optional[str] = ..., state_root: _Optional[bytes] = ..., entry_counts: _Optional[_Mapping[str, int]] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., peer_address: _Optional[str] = ..., client_address: _Optional[str] = ..., metrics_address: _Optional[str] = ..., namespaces: _Optional[_Iterable[str]] = ..., namespace_status: _Optional[_Iterable[_Union[NamespaceStatus, _Mapping]]] = ..., health_address: _Optional[str] = ...) -> None: ...

class NamespaceStatus(_message.Message):
    __slots__ = ("name", "kind", "contributions", "payload_bytes", "settings_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    contributions: int
    payload_bytes: int
    settings_json: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., contributions: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., settings_json: _Optional[str] = ...) -> None: ...

class TrustRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrustScore(_message.Message):
    __slots__ = ("key_id", "name", "dimensions", "trust", "gated", "revoked", "faults")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    GATED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    name: str
    dimensions: _containers.ScalarMap[str, float]
    trust: float
    gated: bool
    revoked: bool
    faults: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[bytes] = ..., name: _Optional[str] = ..., dimensions: _Optional[_Mapping[str, float]] = ..., trust: _Optional[float] = ..., gated: _Optional[bool] = ..., revoked: _Optional[bool] = ..., faults: _Optional[_Iterable[str]] = ...) -> None: ...

class TrustReply(_message.Message):
    __slots__ = ("scores", "threshold", "digest")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[TrustScore]
    threshold: float
    digest: str
    def __init__(self, scores: _Optional[_Iterable[_Union[TrustScore, _Mapping]]] = ..., threshold: _Optional[float] = ..., digest: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "entry_id", "namespace", "detail", "author", "entry_kind")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    ENTRY_KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    entry_id: bytes
    namespace: str
    detail: str
    author: bytes
    entry_kind: str
    def __init__(self, kind: _Optional[str] = ..., entry_id: _Optional[bytes] = ..., namespace: _Optional[str] = ..., detail: _Optional[str] = ..., author: _Optional[bytes] = ..., entry_kind: _Optional[str] = ...) -> None: ...

class SqlRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: str
    def __init__(self, query: _Optional[str] = ...) -> None: ...

class SqlResult(_message.Message):
    __slots__ = ("rows", "namespaces", "input_set_digests", "seconds")
    class InputSetDigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SET_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    input_set_digests: _containers.ScalarMap[str, str]
    seconds: float
    def __init__(self, rows: _Optional[int] = ..., namespaces: _Optional[_Iterable[str]] = ..., input_set_digests: _Optional[_Mapping[str, str]] = ..., seconds: _Optional[float] = ...) -> None: ...

class SqlChunk(_message.Message):
    __slots__ = ("data", "result")
    DATA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    result: SqlResult
    def __init__(self, data: _Optional[bytes] = ..., result: _Optional[_Union[SqlResult, _Mapping]] = ...) -> None: ...

class RecallRequest(_message.Message):
    __slots__ = ("namespace", "query", "k", "embedding")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    query: str
    k: int
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, namespace: _Optional[str] = ..., query: _Optional[str] = ..., k: _Optional[int] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class RecalledMemory(_message.Message):
    __slots__ = ("score", "record_json")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    score: float
    record_json: str
    def __init__(self, score: _Optional[float] = ..., record_json: _Optional[str] = ...) -> None: ...

class RecallReply(_message.Message):
    __slots__ = ("memories", "method", "input_set_digest")
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INPUT_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    memories: _containers.RepeatedCompositeFieldContainer[RecalledMemory]
    method: str
    input_set_digest: str
    def __init__(self, memories: _Optional[_Iterable[_Union[RecalledMemory, _Mapping]]] = ..., method: _Optional[str] = ..., input_set_digest: _Optional[str] = ...) -> None: ...
