"""The reference init scheme (VAR.init_weights) reproduced in distribution: checked against the
analytic standard deviations the recipe implies."""
import math

import numpy as np
import pytest

from arjax.nn.init import create
from arjax.nn.models.var import VAR, VARConfig
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig


def _std(x):
    return float(np.std(np.asarray(x[...])))


@pytest.fixture(scope="module", params=[False, True], ids=["adaln", "shared_adaln"])
def model(request):
    cfg = VARConfig(depth=4, embed_dim=256, num_heads=4, vocab_size=1024, cvae=16, patch_nums=(1, 2, 4, 8),
                    num_classes=100, shared_aln=request.param)
    return create(VAR, cfg, seed=0)


def test_var_init_distributions(model):
    cfg, c = model.cfg, model.cfg.embed_dim
    std = math.sqrt(1 / (3 * c))
    rel = 0.05  # sample std of >= 16k draws is within a few % of the truth
    assert _std(model.word_embed.kernel) == pytest.approx(std, rel=rel)
    assert _std(model.class_emb.embedding) == pytest.approx(std, rel=rel)
    assert _std(model.pos_1LC) == pytest.approx(std, rel=rel)
    assert _std(model.head.kernel) == pytest.approx(std * cfg.init_head, rel=rel)
    assert _std(model.head_nm.ada_lin.kernel) == pytest.approx(std * cfg.init_adaln, rel=rel)
    for blk in model.blocks:
        assert _std(blk.attn.mat_qkv.kernel) == pytest.approx(std, rel=rel)
        assert _std(blk.attn.proj.kernel) == pytest.approx(std / math.sqrt(2 * cfg.depth), rel=rel)
        assert _std(blk.ffn.fc2.kernel) == pytest.approx(std / math.sqrt(2 * cfg.depth), rel=rel)
        np.testing.assert_array_equal(np.asarray(blk.attn.q_bias[...]), 0)
        np.testing.assert_allclose(np.asarray(blk.attn.scale_mul_1H11[...]), math.log(4.0), rtol=1e-6)
        if cfg.shared_aln:  # randn / sqrt(C), gammas scaled by init_adaln_gamma, the rest by init_adaln
            gss = np.asarray(blk.ada_gss[...])[0, 0]
            assert np.std(gss[:2]) == pytest.approx(cfg.init_adaln_gamma / math.sqrt(c), rel=0.1)
            assert np.std(gss[2:]) == pytest.approx(cfg.init_adaln / math.sqrt(c), rel=0.1)
        else:  # kernel (C, 6C): output columns [gamma1, gamma2 | scale1, scale2, shift1, shift2]
            k = np.asarray(blk.ada_lin.kernel[...])
            assert np.std(k[:, :2 * c]) == pytest.approx(std * cfg.init_adaln_gamma, rel=rel)
            assert np.std(k[:, 2 * c:]) == pytest.approx(std * cfg.init_adaln, rel=rel)
            np.testing.assert_array_equal(np.asarray(blk.ada_lin.bias[...]), 0)
    if cfg.shared_aln:
        assert _std(model.shared_ada_lin.kernel) == pytest.approx(std, rel=rel)


def test_tokenizer_init_matches_torch_defaults():
    cfg = VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=512, z_channels=16, patch_nums=(1, 2, 4))
    vae = create(MultiScaleVQVAE, cfg, seed=0)
    conv = vae.encoder.down[1].block[0].conv1  # 32 -> 64, 3x3: fan_in 288
    bound = 1 / math.sqrt(32 * 9)
    k = np.asarray(conv.kernel[...])
    assert np.abs(k).max() <= bound and _std(conv.kernel) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert np.abs(np.asarray(conv.bias[...])).max() <= bound
    np.testing.assert_array_equal(np.asarray(vae.encoder.norm_out.scale[...]), 1)
