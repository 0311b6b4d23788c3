"""The DALI `mixed` decoders' GPU tuning: how much goes to the hardware JPEG decoder, and nvJPEG's buffer
sizes, each value with the source it comes from (kept apart from the pipeline that uses them)."""

from __future__ import annotations

from typing import Any

# Share of the JPEGs sent to the hardware JPEG decoder (the NVJPG engines of A100 / H100 / H200, which use no
# SM time); the rest take nvJPEG's hybrid path: Huffman decoding on DALI's CPU threads, the IDCT on the SMs
# the training step needs. 0.9 is DALI's own default for its nvImageCodec decoder (0.65 for this one).
# NVIDIA's MLPerf ResNet-50 configs span 0 (one DGX-A100 node, 408 images per GPU and step: every image on
# the CUDA path) to 0.7-0.99 (many nodes, 35-40 images per GPU); fastlt's images are <= 512 px
# and its GPUs are busy training, which favours the engines. DALI's docs say the value "should be found
# empirically": measure it on the GPU (`make gpu-check` cannot: the check machine has no DALI).
HW_DECODER_LOAD = 0.9

# nvJPEG's buffer paddings as NVIDIA's ResNet-50 DALI pipelines set them (DALI's example and
# DeepLearningExamples: device 211025920 B, host 140544512 B, "to handle all images from full-sized ImageNet
# without additional reallocations"; its largest image is 5980 x 6430 px, so about 5.5 and 3.7 bytes per
# pixel), scaled to the largest side this data set was converted with, never below DALI's defaults.
NVIDIA_DEVICE_PADDING, NVIDIA_HOST_PADDING, IMAGENET_MAX_PIXELS = 211025920, 140544512, 5980 * 6430
DALI_DEVICE_PADDING, DALI_HOST_PADDING = 16 << 20, 8 << 20


def decoder_args(max_resolution: int) -> dict[str, Any]:
    """The `mixed` decoders' tuning for images whose longest side is `max_resolution` (0: unbounded)."""
    if max_resolution <= 0:
        return dict(
            hw_decoder_load=HW_DECODER_LOAD,
            device_memory_padding=NVIDIA_DEVICE_PADDING,
            host_memory_padding=NVIDIA_HOST_PADDING,
        )
    share = max_resolution * max_resolution / IMAGENET_MAX_PIXELS
    return dict(
        hw_decoder_load=HW_DECODER_LOAD,
        device_memory_padding=max(DALI_DEVICE_PADDING, int(NVIDIA_DEVICE_PADDING * share)),
        host_memory_padding=max(DALI_HOST_PADDING, int(NVIDIA_HOST_PADDING * share)),
        # the hardware decoder's own buffers, allocated at build instead of while the first epoch runs
        preallocate_width_hint=max_resolution,
        preallocate_height_hint=max_resolution,
    )
