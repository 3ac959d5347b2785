"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2016), for CPU inference.

A 3x3 convolution with stride 1 and zero padding 1 computes every 4 x 4 output tile from a 6 x 6 input tile. Winograd's
algorithm maps the input tile ``d`` and the filter ``g`` into 6 x 6 arrays, ``V = B^T d B`` and ``U = G g G^T``,
multiplies them entry by entry, summed over the input channels (36 matrix products ``(tiles, C_in) x (C_in,
C_out)``), and maps the products back with ``Y = A^T M A``. That is 36 multiplications per 16 outputs and channel pair
instead of 144: the matrix products do a quarter of a direct convolution's arithmetic, and the transforms, which
are linear maps over the tiles, cost memory passes rather than multiplications.

The transforms use the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray's matrices). In float32 the
result differs from a direct convolution by a few times float32 rounding (measured: about 1e-5 of the largest
output on 256-channel layers, against about 1e-6 for oneDNN's direct convolution); in float64 they agree to 1e-13.

The work runs in chunks of about `TILES_PER_CHUNK` tiles, so that the transformed tiles of one chunk stay in cache
between the transform and the matrix products.

Letters: ``B`` images, ``C``/``C_out`` input/output channels, ``H``/``W`` height/width, ``th``/``tw`` tiles along
them (``ceil(H / 4)``, ``ceil(W / 4)``).
"""

import torch

__all__ = ["TILES_PER_CHUNK", "conv3x3_winograd", "winograd_filters"]

TILES_PER_CHUNK = 256  # 128 to 512 ran alike on aisfx's layers (2 AVX2 cores); fewer makes the products inefficient

# F(4x4, 3x3): input transform B^T (6 x 6), filter transform G (6 x 3), output transform A^T (4 x 6).
_INPUT_TRANSFORM = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_FILTER_TRANSFORM = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_OUTPUT_TRANSFORM = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=torch.float64
)


def winograd_filters(weight: torch.Tensor) -> torch.Tensor:
    """The transformed filters ``U = G g G^T`` of 3x3 convolution weights, for `conv3x3_winograd`.

    Args:
        weight (`torch.Tensor` of shape ``(C_out, C_in, 3, 3)``): the convolution's weights.

    Returns:
        `torch.Tensor` of shape ``(36, C_out, C_in)``: entry ``(6 i + j, o, c)`` is ``U[i, j]`` of filter ``(o, c)``.
        Four times the memory of ``weight``: compute it once per forward pass, not per chunk of a batch.
    """
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(
            f"winograd_filters takes 3x3 convolution weights (C_out, C_in, 3, 3), got {tuple(weight.shape)}."
        )
    out_channels, in_channels = weight.shape[:2]
    transform = torch.kron(_FILTER_TRANSFORM, _FILTER_TRANSFORM).to(weight)  # (36, 9): U = kron(G, G) vec(g)
    flat = weight.reshape(out_channels * in_channels, 9)
    return torch.mm(transform, flat.t()).view(36, out_channels, in_channels)


def _chunks(
    num_images: int, tile_rows: int, tiles_per_row: int, tiles_per_chunk: int
) -> list[tuple[int, int, int, int]]:
    """``(first image, end image, first tile row, end tile row)`` spans of about ``tiles_per_chunk`` tiles each:
    whole images when one image has fewer tiles, else runs of tile rows of one image."""
    rows = max(1, -(-tiles_per_chunk // tiles_per_row))
    if rows >= tile_rows:
        images = rows // tile_rows
        return [(start, min(start + images, num_images), 0, tile_rows) for start in range(0, num_images, images)]
    return [
        (image, image + 1, row, min(row + rows, tile_rows))
        for image in range(num_images)
        for row in range(0, tile_rows, rows)
    ]


def _zero_padded_channels_last(hidden_states: torch.Tensor, tile_rows: int, tiles_per_row: int) -> torch.Tensor:
    """``(B, 4 th + 2, 4 tw + 2, C)`` copy of ``hidden_states`` ``(B, C, H, W)`` with one zero row/column before it
    and zeros after it up to the tile grid; only the border is zeroed."""
    batch_size, channels, height, width = hidden_states.shape
    padded = hidden_states.new_empty(batch_size, 4 * tile_rows + 2, 4 * tiles_per_row + 2, channels)
    padded[:, 0].zero_()
    padded[:, height + 1 :].zero_()
    padded[:, 1 : height + 1, 0].zero_()
    padded[:, 1 : height + 1, width + 1 :].zero_()
    padded[:, 1 : height + 1, 1 : width + 1] = hidden_states.permute(0, 2, 3, 1)
    return padded


def _tiles(tensor: torch.Tensor, size: int, tile_rows: int, tiles_per_row: int) -> torch.Tensor:
    """View ``(size, size, B, th, tw, C)`` of the ``size x size`` tiles every 4 rows/columns of ``(B, rows, cols,
    C)`` (overlapping when ``size > 4``)."""
    image_stride, row_stride, column_stride, channel_stride = tensor.stride()
    return tensor.as_strided(
        (size, size, tensor.shape[0], tile_rows, tiles_per_row, tensor.shape[3]),
        (row_stride, column_stride, image_stride, 4 * row_stride, 4 * column_stride, channel_stride),
    )


def conv3x3_winograd(
    hidden_states: torch.Tensor,
    filters: torch.Tensor,
    bias: torch.Tensor | None = None,
    tiles_per_chunk: int = TILES_PER_CHUNK,
) -> torch.Tensor:
    """``F.conv2d(hidden_states, weight, bias, padding=1)`` by F(4x4, 3x3) Winograd, without autograd support.

    Args:
        hidden_states (`torch.Tensor` of shape ``(B, C_in, H, W)``): input, any memory format (channels-last is read
            without a reorder).
        filters (`torch.Tensor` of shape ``(36, C_out, C_in)``): `winograd_filters` of the weights.
        bias (`torch.Tensor` of shape ``(C_out,)``, *optional*): added to every output.
        tiles_per_chunk (`int`): 4 x 4 output tiles transformed and multiplied per step.

    Returns:
        `torch.Tensor` of shape ``(B, C_out, H, W)`` in channels-last memory (a view with row strides of the tile
        grid when ``H`` or ``W`` is not a multiple of 4).
    """
    batch_size, in_channels, height, width = hidden_states.shape
    if filters.shape[0] != 36 or filters.shape[2] != in_channels:
        raise ValueError(
            f"filters must have shape (36, C_out, {in_channels}) (winograd_filters of the weights), "
            f"got {tuple(filters.shape)}."
        )
    out_channels = filters.shape[1]
    input_transform = _INPUT_TRANSFORM.to(hidden_states)
    output_transform = _OUTPUT_TRANSFORM.to(hidden_states)
    tile_rows, tiles_per_row = -(-height // 4), -(-width // 4)
    padded = _zero_padded_channels_last(hidden_states, tile_rows, tiles_per_row)
    input_tiles = _tiles(padded, 6, tile_rows, tiles_per_row)  # (6, 6, B, th, tw, C_in), overlapping views
    out = hidden_states.new_empty(batch_size, 4 * tile_rows, 4 * tiles_per_row, out_channels)
    output_tiles = _tiles(out, 4, tile_rows, tiles_per_row)  # (4, 4, B, th, tw, C_out)
    spans = _chunks(batch_size, tile_rows, tiles_per_row, tiles_per_chunk)
    most_tiles = max((end - start) * (row_end - row) * tiles_per_row for start, end, row, row_end in spans)
    first = hidden_states.new_empty(36 * most_tiles * max(in_channels, out_channels))  # two buffers, used in turn
    second = torch.empty_like(first)
    products_by_position = filters.transpose(1, 2)  # (36, C_in, C_out)
    for start, end, row, row_end in spans:
        images, rows = end - start, row_end - row
        tiles = images * rows * tiles_per_row
        inputs = tiles * in_channels
        gathered = first[: 36 * inputs].view(6, 6, images, rows, tiles_per_row, in_channels)
        gathered.copy_(input_tiles[:, :, start:end, row:row_end])
        # V = B^T d B: B^T along the tile rows (one product), then along the tile columns (six).
        rows_done = second[: 36 * inputs].view(6, 6, inputs)
        torch.mm(input_transform, gathered.view(6, 6 * inputs), out=rows_done.view(6, 6 * inputs))
        transformed = first[: 36 * inputs].view(6, 6, inputs)
        torch.matmul(input_transform, rows_done, out=transformed)
        products = second[: 36 * tiles * out_channels].view(36, tiles, out_channels)
        torch.bmm(transformed.view(36, tiles, in_channels), products_by_position, out=products)
        # Y = A^T M A, then into the output's tiles.
        outputs = tiles * out_channels
        rows_back = first[: 24 * outputs].view(4, 6, outputs)
        torch.mm(output_transform, products.view(6, 6 * outputs), out=rows_back.view(4, 6 * outputs))
        tile_values = second[: 16 * outputs].view(4, 4, outputs)
        torch.matmul(output_transform, rows_back, out=tile_values)
        output_tiles[:, :, start:end, row:row_end] = tile_values.view(4, 4, images, rows, tiles_per_row, out_channels)
    if bias is not None:
        out += bias
    return out[:, :height, :width].permute(0, 3, 1, 2)
