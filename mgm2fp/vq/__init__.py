"""VQ image tokenizers: the decoder paths that turn MaskGIT token grids into images."""

from mgm2fp.vq.decoders import LLAMAGEN_VQ_DS16_C2I, TAMING_VQGAN_F16_1024, VQ_DECODERS, LlamaGenVQDecoder, TamingVQGANDecoder, VQDecoder, VQDecoderConfig
from mgm2fp.vq.loading import load_vq_decoder

__all__ = ["LLAMAGEN_VQ_DS16_C2I", "TAMING_VQGAN_F16_1024", "VQ_DECODERS", "LlamaGenVQDecoder", "TamingVQGANDecoder", "VQDecoder", "VQDecoderConfig", "load_vq_decoder"]
