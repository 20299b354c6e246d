"""``mgm2fp decode``: turn saved MaskGIT token grids into a PNG grid with a VQ tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgm2fp.cli.common import app, console


@app.command()
def decode(
    tokens: Path = typer.Argument(..., exists=True, dir_okay=False, help="Token grids [N, g, g] or [N, g*g]: a .safetensors file (tensor 'codes'), or a .pt/.pth file read weights-only."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="VQ tokenizer weights: hub id (ORG/NAME/file), folder or file (LlamaGen vq_ds16_c2i.pt or taming VQGAN last.ckpt)."),
    output: Path = typer.Option(Path("samples.png"), "--output", "-o", help="PNG file to write the image grid to."),
    key: str = typer.Option("codes", help="Name of the token tensor inside the tokens file."),
    kind: Optional[str] = typer.Option(None, help="Tokenizer layout: llamagen or taming [default: detected from the weights]."),
    filename: Optional[str] = typer.Option(None, help="Weights file inside a hub repository or folder."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub tokenizer."),
    nrow: Optional[int] = typer.Option(None, min=1, help="Images per row of the grid [default: about the square root of N]."),
    batch_size: int = typer.Option(16, min=1, help="Token grids decoded per forward pass."),
    device: str = typer.Option("cpu", help="Device to decode on, e.g. cuda."),
) -> None:
    """Decode token grids with a VQ tokenizer and write them as one PNG grid."""
    from mgm2fp.images import decode_tokens, read_token_grids, save_image_grid
    from mgm2fp.vq import load_vq_decoder

    codes = read_token_grids(tokens, key=key)
    decoder = load_vq_decoder(tokenizer, kind=kind, filename=filename, revision=revision, device=device)
    images = decode_tokens(decoder, codes, batch_size=batch_size)
    save_image_grid(images, output, nrow=nrow)
    console.print(f"[green]wrote[/] {output}: {images.shape[0]} images of {images.shape[-2]}x{images.shape[-1]} pixels ({decoder.kind} tokenizer)")
