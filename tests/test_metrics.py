"dinof.metrics: scores and statistics against independent references (scipy, pytorch-fid, hand-computed cases)."
import math
import numpy as np
import pytest
import scipy.linalg
import torch
from dinof.metrics import fid, kid, inception_score, RunningStats, FIDStats


def _gauss(rng, d, n):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / math.sqrt(d) + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize('d', [2, 17, 256])
def test_fid_matches_scipy_and_pytorch_fid(d):
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(d)
    (m1, s1), (m2, s2) = _gauss(rng, d, 3 * d + 5), _gauss(rng, d, 3 * d + 5)
    ours = fid(m1, s1, m2, s2)
    ref = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert abs(ours - calculate_frechet_distance(m1, s1, m2, s2)) <= 1e-6 * abs(ref)
    assert abs(fid(torch.tensor(m1), torch.tensor(s1), torch.tensor(m2), torch.tensor(s2)) - ours) <= 1e-12 * abs(ours)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    for n in (30, 500):   # rank-deficient (n < d) and full-rank covariances, d = 100
        x = rng.standard_normal((n, 100)) * rng.uniform(0.01, 10, 100)
        st = RunningStats(100).update(x).stats()
        assert abs(fid(st.mu, st.sigma, st.mu, st.sigma)) < 1e-6


def test_fid_symmetric_and_translation():
    rng = np.random.default_rng(1)
    (m1, s1), (m2, s2) = _gauss(rng, 8, 40), _gauss(rng, 8, 40)
    assert abs(fid(m1, s1, m2, s2) - fid(m2, s2, m1, s1)) < 1e-9
    assert abs(fid(m1 + 3, s1, m1, s1) - 9 * 8) < 1e-8   # same covariance: only the mean term


def test_fid_bad_inputs():
    m, s = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match='different feature dimensions'): fid(m, s, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r'sigma2: must be a \[D, D\]'): fid(m, s, m, np.eye(3))
    with pytest.raises(ValueError, match='NaN'): fid(m, np.full((4, 4), np.nan), m, s)


def test_kid_hand_computed():
    # k(x,y) = (xy + 1)^3: Kxx off-diag 1, Kyy off-diag 27, Kxy = [[1,1],[8,27]] -> 1 + 27 - 2*37/4 = 9.5
    assert kid([[0.], [1.]], [[1.], [2.]], n_subsets=4) == (9.5, 0.)
    # d = 2 scales the dot product: x = (1,1), (0,0); y = (1,0), (0,1): Kxx off 1, Kyy off 1, Kxy all (0.5+1)^3 or 1
    kxy = np.array([[1.5 ** 3, 1.5 ** 3], [1., 1.]])
    assert abs(kid([[1., 1.], [0., 0.]], [[1., 0.], [0., 1.]])[0] - (1 + 1 - 2 * kxy.mean())) < 1e-12


def test_kid_subsets_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 5)), rng.standard_normal((200, 5)) + 1
    assert kid(a, b, n_subsets=10, subset_size=50, seed=1) == kid(a, b, n_subsets=10, subset_size=50, seed=1)
    m, s = kid(a, b, n_subsets=10, subset_size=50, seed=1)
    assert m > 0 and s > 0


def test_inception_score_hand_computed():
    onehot = np.full((100, 10), -50.); onehot[np.arange(100), np.arange(100) % 10] = 50.
    mean, std = inception_score(onehot)
    assert abs(mean - 10) < 1e-9 and std < 1e-9
    assert abs(inception_score(np.zeros((20, 5)))[0] - 1) < 1e-12
    # two images, softmax (p, 1-p) and (1-p, p): marginal uniform, log IS = log 2 - H(p)
    p = 0.9
    want = math.exp(math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p))
    assert abs(inception_score(torch.log(torch.tensor([[p, 1 - p], [1 - p, p]])), splits=1)[0] - want) < 1e-6
    with pytest.raises(ValueError, match='splits'): inception_score(np.zeros((5, 3)), splits=6)


def test_running_stats_match_numpy_any_batching():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((257, 6)) * 5 + 1e5
    for cuts in ([], [1], [2, 3, 100], list(range(1, 257, 16))):
        rs = RunningStats(6)
        for part in np.split(x, cuts): rs.update(part)
        assert rs.n == 257
        np.testing.assert_allclose(rs.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(rs.sigma, np.cov(x, rowvar=False), rtol=1e-8)


def test_stats_npz_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    st = RunningStats(3).update(rng.standard_normal((10, 3))).stats('fmnist', 'deadbeef', 'crop28')
    p = st.save(tmp_path / 'a' / 'b.npz')
    with np.load(p) as z: assert set(z.files) == {'mu', 'sigma', 'n', 'extractor', 'extractor_hash', 'preprocess'}
    back = FIDStats.load(p)
    assert (back.n, back.extractor, back.extractor_hash, back.preprocess) == (10, 'fmnist', 'deadbeef', 'crop28')
    np.testing.assert_array_equal(back.sigma, st.sigma)
    with pytest.raises(FileNotFoundError, match='missing.npz'): FIDStats.load(tmp_path / 'missing.npz')
    (tmp_path / 'junk.npz').write_bytes(b'not a zip')
    with pytest.raises(ValueError, match='junk.npz'): FIDStats.load(tmp_path / 'junk.npz')


def test_reference_stats_cache(tmp_path, monkeypatch):
    import torch
    from dinof.metrics import Extractor, reference_stats, stats_cache_dir

    calls = []
    class Net(torch.nn.Module):
        def forward(self, x): calls.append(len(x)); return x.flatten(1)[:, :5] * 2
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert stats_cache_dir() == tmp_path / 'dinof' / 'stats'
    data = torch.rand(30, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    ext = Extractor('twice', Net(), device='cpu', batch_size=7)
    st = reference_stats('tiny', ext, split='test', data=data, progress=False)
    assert sum(calls) == 30 and st.n == 30 and (st.extractor, st.extractor_hash) == ('twice', ext.hash)
    feats = (data.flatten(1)[:, :5] * 2).double().numpy()
    np.testing.assert_allclose(st.sigma, np.cov(feats, rowvar=False), rtol=1e-10)
    files = list((tmp_path / 'dinof' / 'stats').iterdir())
    assert len(files) == 1 and files[0].name.startswith('tiny-test-twice-')
    again = reference_stats('tiny', ext, split='test', data=data, progress=False)
    assert sum(calls) == 30 and np.array_equal(again.mu, st.mu)          # served from the cache
    files[0].write_bytes(b'corrupt')
    reference_stats('tiny', ext, split='test', data=data, progress=False)
    assert sum(calls) == 60                                               # unreadable cache: recomputed
    # a dataset of (image, label) items streams the same statistics
    class DS:
        def __len__(self): return len(data)
        def __getitem__(self, i): return data[i], 0
    st2 = reference_stats('tiny2', ext, data=DS(), progress=False)
    np.testing.assert_allclose(st2.sigma, st.sigma, rtol=1e-12)


def test_statistics_of_different_preprocessings_are_refused():
    rng = np.random.default_rng(5)
    a = RunningStats(4).update(rng.standard_normal((20, 4))).stats('inception', 'h', 'tf')
    b = RunningStats(4).update(rng.standard_normal((20, 4))).stats('inception', 'h', 'torch')
    with pytest.raises(ValueError, match=r"different preprocessings \('tf' vs 'torch'\)"): a.fid(b)
    assert a.fid(RunningStats(4).update(rng.standard_normal((20, 4))).stats('inception', 'h', 'tf')) > 0


def test_cache_keyed_on_content_and_force_recomputes(tmp_path):
    "Issue 10 item 11: the same dataset name with other data is another cache entry; force=True recomputes."
    from dinof.metrics import Extractor, reference_stats
    calls = []
    class Net(torch.nn.Module):
        def forward(self, x): calls.append(len(x)); return x.flatten(1)[:, :3]
    ext = Extractor('net', Net(), device='cpu', batch_size=8)
    g = torch.Generator().manual_seed(0)
    clothes, noise = torch.rand(12, 1, 2, 2, generator=g), torch.rand(12, 1, 2, 2, generator=g)
    a = reference_stats('same_name', ext, data=clothes, cache_dir=tmp_path, progress=False)
    b = reference_stats('same_name', ext, data=noise, cache_dir=tmp_path, progress=False)
    assert sum(calls) == 24 and not np.array_equal(a.mu, b.mu)
    assert np.array_equal(reference_stats('same_name', ext, data=clothes, cache_dir=tmp_path, progress=False).mu, a.mu)
    assert sum(calls) == 24                                                 # cached
    reference_stats('same_name', ext, data=clothes, cache_dir=tmp_path, progress=False, force=True)
    assert sum(calls) == 36                                                 # force: recomputed


def test_stream_equals_all_at_once(tmp_path):
    "Issue 10 item 10: statistics streamed from a folder / .npz in small batches equal those of the array in memory."
    from PIL import Image
    from dinof.metrics import Extractor, compute_stats, open_images
    ext = Extractor('pool', torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), device='cpu')
    x = np.random.default_rng(6).integers(0, 256, (23, 3, 8, 8), dtype=np.uint8)
    (tmp_path / 'png').mkdir()
    for k, im in enumerate(x): Image.fromarray(im.transpose(1, 2, 0)).save(tmp_path / 'png' / f'{k:02d}.png')
    np.savez_compressed(tmp_path / 'x.npz', samples=x.transpose(0, 2, 3, 1))
    whole = compute_stats(torch.from_numpy(x), ext, batch_size=100, progress=False)
    for src in (tmp_path / 'png', tmp_path / 'x.npz'):
        st = compute_stats(open_images(src), ext, batch_size=4, progress=False)
        np.testing.assert_allclose(st.mu, whole.mu, rtol=1e-12)
        np.testing.assert_allclose(st.sigma, whole.sigma, rtol=1e-9, atol=1e-15)
    sub = open_images(tmp_path / 'x.npz').select([3, 20, 7])
    assert torch.equal(torch.cat(list(sub.batches(2))), torch.from_numpy(x[[3, 7, 20]]))
