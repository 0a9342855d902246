# lz4.frame: the frame API aioworkflow's codec and encoder call (lz4 4.x signatures).

def compress(
    data: bytes | bytearray | memoryview,
    compression_level: int = ...,
    block_size: int = ...,
    content_checksum: bool = ...,
    block_checksum: bool = ...,
    block_linked: bool = ...,
    store_size: bool = ...,
    return_bytearray: bool = ...,
    source_size: int = ...,
) -> bytes: ...
def decompress(
    data: bytes | bytearray | memoryview,
    return_bytearray: bool = ...,
    return_bytes_read: bool = ...,
) -> bytes: ...

class LZ4FrameDecompressor:
    def __init__(self, return_bytearray: bool = ...) -> None: ...
    def decompress(self, data: bytes | bytearray | memoryview, max_length: int = ...) -> bytes: ...
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...
    def reset(self) -> None: ...
