from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerAddress(_message.Message):
    __slots__ = ("address", "key_id")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    address: str
    key_id: bytes
    def __init__(self, address: _Optional[str] = ..., key_id: _Optional[bytes] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("federation_id", "protocol_version", "key_id", "membership", "capabilities", "nonce", "advertise", "peers")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    protocol_version: int
    key_id: bytes
    membership: bytes
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    nonce: bytes
    advertise: str
    peers: _containers.RepeatedCompositeFieldContainer[PeerAddress]
    def __init__(self, federation_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., key_id: _Optional[bytes] = ..., membership: _Optional[bytes] = ..., capabilities: _Optional[_Iterable[str]] = ..., nonce: _Optional[bytes] = ..., advertise: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[PeerAddress, _Mapping]]] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("federation_id", "protocol_version", "key_id", "membership", "capabilities", "nonce", "signature", "advertise", "peers")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    protocol_version: int
    key_id: bytes
    membership: bytes
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    nonce: bytes
    signature: bytes
    advertise: str
    peers: _containers.RepeatedCompositeFieldContainer[PeerAddress]
    def __init__(self, federation_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., key_id: _Optional[bytes] = ..., membership: _Optional[bytes] = ..., capabilities: _Optional[_Iterable[str]] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., advertise: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[PeerAddress, _Mapping]]] = ...) -> None: ...

class ProveRequest(_message.Message):
    __slots__ = ("server_nonce", "signature")
    SERVER_NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    server_nonce: bytes
    signature: bytes
    def __init__(self, server_nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ProveResponse(_message.Message):
    __slots__ = ("session", "ttl_ms")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    session: bytes
    ttl_ms: int
    def __init__(self, session: _Optional[bytes] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class MerkleProbe(_message.Message):
    __slots__ = ("prefix", "hash", "list")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    hash: bytes
    list: bool
    def __init__(self, prefix: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., list: _Optional[bool] = ...) -> None: ...

class MerkleProbes(_message.Message):
    __slots__ = ("probes", "hash_bytes", "ids_threshold")
    PROBES_FIELD_NUMBER: _ClassVar[int]
    HASH_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    probes: _containers.RepeatedCompositeFieldContainer[MerkleProbe]
    hash_bytes: int
    ids_threshold: int
    def __init__(self, probes: _Optional[_Iterable[_Union[MerkleProbe, _Mapping]]] = ..., hash_bytes: _Optional[int] = ..., ids_threshold: _Optional[int] = ...) -> None: ...

class MerkleChildren(_message.Message):
    __slots__ = ("present", "hashes")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    present: bytes
    hashes: bytes
    def __init__(self, present: _Optional[bytes] = ..., hashes: _Optional[bytes] = ...) -> None: ...

class MerkleNode(_message.Message):
    __slots__ = ("prefix", "equal", "children", "ids")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    EQUAL_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    equal: bool
    children: MerkleChildren
    ids: bytes
    def __init__(self, prefix: _Optional[bytes] = ..., equal: _Optional[bool] = ..., children: _Optional[_Union[MerkleChildren, _Mapping]] = ..., ids: _Optional[bytes] = ...) -> None: ...

class MerkleNodes(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[MerkleNode]
    def __init__(self, nodes: _Optional[_Iterable[_Union[MerkleNode, _Mapping]]] = ...) -> None: ...

class RibltRequest(_message.Message):
    __slots__ = ("root", "start", "count", "salt")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    root: bytes
    start: int
    count: int
    salt: int
    def __init__(self, root: _Optional[bytes] = ..., start: _Optional[int] = ..., count: _Optional[int] = ..., salt: _Optional[int] = ...) -> None: ...

class RibltSymbols(_message.Message):
    __slots__ = ("equal", "salt", "root", "size", "start", "sums", "checks", "counts", "stale")
    EQUAL_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    equal: bool
    salt: int
    root: bytes
    size: int
    start: int
    sums: bytes
    checks: bytes
    counts: _containers.RepeatedScalarFieldContainer[int]
    stale: bool
    def __init__(self, equal: _Optional[bool] = ..., salt: _Optional[int] = ..., root: _Optional[bytes] = ..., size: _Optional[int] = ..., start: _Optional[int] = ..., sums: _Optional[bytes] = ..., checks: _Optional[bytes] = ..., counts: _Optional[_Iterable[int]] = ..., stale: _Optional[bool] = ...) -> None: ...

class DigestRequest(_message.Message):
    __slots__ = ("merkle", "riblt")
    MERKLE_FIELD_NUMBER: _ClassVar[int]
    RIBLT_FIELD_NUMBER: _ClassVar[int]
    merkle: MerkleProbes
    riblt: RibltRequest
    def __init__(self, merkle: _Optional[_Union[MerkleProbes, _Mapping]] = ..., riblt: _Optional[_Union[RibltRequest, _Mapping]] = ...) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("merkle", "riblt")
    MERKLE_FIELD_NUMBER: _ClassVar[int]
    RIBLT_FIELD_NUMBER: _ClassVar[int]
    merkle: MerkleNodes
    riblt: RibltSymbols
    def __init__(self, merkle: _Optional[_Union[MerkleNodes, _Mapping]] = ..., riblt: _Optional[_Union[RibltSymbols, _Mapping]] = ...) -> None: ...

class FetchEntriesRequest(_message.Message):
    __slots__ = ("ids", "chain_order", "limit")
    IDS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ORDER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    chain_order: bool
    limit: int
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ..., chain_order: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class EntryRecord(_message.Message):
    __slots__ = ("entry", "manifest", "chunks")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    manifest: bytes
    chunks: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, entry: _Optional[bytes] = ..., manifest: _Optional[bytes] = ..., chunks: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EntryBatch(_message.Message):
    __slots__ = ("records", "unknown")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[EntryRecord]
    unknown: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, records: _Optional[_Iterable[_Union[EntryRecord, _Mapping]]] = ..., unknown: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FetchChunksRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkPiece(_message.Message):
    __slots__ = ("digest", "offset", "data", "last")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    offset: int
    data: bytes
    last: bool
    def __init__(self, digest: _Optional[bytes] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    reason: str
    def __init__(self, id: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class OfferRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[EntryRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[EntryRecord, _Mapping]]] = ...) -> None: ...

class OfferResponse(_message.Message):
    __slots__ = ("applied", "rejected", "wanted", "missing_chunks")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    WANTED_FIELD_NUMBER: _ClassVar[int]
    MISSING_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    applied: _containers.RepeatedScalarFieldContainer[bytes]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    wanted: _containers.RepeatedScalarFieldContainer[bytes]
    missing_chunks: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, applied: _Optional[_Iterable[bytes]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., wanted: _Optional[_Iterable[bytes]] = ..., missing_chunks: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PushMessage(_message.Message):
    __slots__ = ("record", "piece")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    record: EntryRecord
    piece: ChunkPiece
    def __init__(self, record: _Optional[_Union[EntryRecord, _Mapping]] = ..., piece: _Optional[_Union[ChunkPiece, _Mapping]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("applied", "rejected", "incomplete")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    applied: _containers.RepeatedScalarFieldContainer[bytes]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    incomplete: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, applied: _Optional[_Iterable[bytes]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., incomplete: _Optional[_Iterable[bytes]] = ...) -> None: ...

class NotifyRequest(_message.Message):
    __slots__ = ("root",)
    ROOT_FIELD_NUMBER: _ClassVar[int]
    root: bytes
    def __init__(self, root: _Optional[bytes] = ...) -> None: ...

class NotifyResponse(_message.Message):
    __slots__ = ("will_sync",)
    WILL_SYNC_FIELD_NUMBER: _ClassVar[int]
    will_sync: bool
    def __init__(self, will_sync: _Optional[bool] = ...) -> None: ...
