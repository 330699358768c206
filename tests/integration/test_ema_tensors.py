"""FTD's image average on torch tensors: no aliasing of the images the optimiser updates
in place, and the update is FTD's expression to the bit."""

import torch

from tesla.domain.ema import ImageEMA


def test_the_average_does_not_alias_the_images_and_matches_ftds_expression():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 8, generator=g)
    ema = ImageEMA(0.995)
    avg = ema.start(images)
    assert torch.equal(avg, images) and avg.data_ptr() != images.data_ptr()
    reference = images.clone()
    for _ in range(5):
        images.add_(torch.randn(images.shape, generator=g))  # an in-place optimiser step
        avg = ema.update(avg, images)
        reference = 0.995 * reference + (1.0 - 0.995) * images
    assert torch.equal(avg, reference)
    assert not torch.equal(avg, images)
