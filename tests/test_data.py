"dinof.data outside the notebook: a real two-process (gloo) DDP run of the loader, data discovery and the cache."
import gzip, os, shutil
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from dinof.data import Loader, TensorImages, get_dataset, get_loader, _DEBIAN, _find_files

def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        data = torch.arange(48, dtype=torch.uint8).reshape(48, 1, 1, 1).contiguous()
        loader = Loader(TensorImages(data), batch_size=8, seed=5)   # rank and world size from torch.distributed
        ids = [[int(round(v * 255)) for v in b.flatten().tolist()] for b in loader]
        torch.save({'ids': ids, 'local': loader.local_batch_size}, f'{out}/rank{rank}.pt')
    finally: dist.destroy_process_group()

def test_loader_under_ddp(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1))
    assert r0['local'] == r1['local'] == 4
    a, b = sum(r0['ids'], []), sum(r1['ids'], [])
    assert not set(a) & set(b) and sorted(a + b) == list(range(48))
    # the same as the single-process loader told the rank explicitly
    data = torch.arange(48, dtype=torch.uint8).reshape(48, 1, 1, 1).contiguous()
    explicit = Loader(TensorImages(data), batch_size=8, seed=5, rank=1, world_size=2)
    assert [[int(round(v * 255)) for v in x.flatten().tolist()] for x in explicit] == r1['ids']

def test_image_folder_splits_and_errors(tmp_path):
    for split, n in (('train', 3), ('test', 2)):
        (tmp_path / split).mkdir()
        for i in range(n): Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)).save(tmp_path / split / f'{i}.png')
    tr = get_dataset('celebahq', root=tmp_path, image_size=8)
    te = get_dataset('celebahq', root=tmp_path, split='test', image_size=8)
    assert (len(tr), len(te), tr.shape, tr.random_flip, te.random_flip) == (3, 2, (3, 8, 8), True, False)
    with pytest.raises(FileNotFoundError, match=f'celebahq: no data found in {tmp_path / "none"}'):
        get_dataset('celebahq', root=tmp_path / 'none')
    with pytest.raises(ValueError, match='root'): get_dataset('image_folder', image_size=8)
    with pytest.raises(ValueError, match='image_size'): get_dataset('image_folder', root=tmp_path)

def _fake_idx(folder: Path, n=5, gz=True, seed=0):
    "Tiny MNIST-format IDX files (magic numbers and big-endian sizes as in the real ones)."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = {}
    for prefix in ('train', 't10k'):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8); imgs[prefix] = x
        img = np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([n, 28, 28], '>i4').tobytes() + x.tobytes()
        lab = np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([n], '>i4').tobytes() + rng.integers(0, 10, n, dtype=np.uint8).tobytes()
        for name, blob in ((f'{prefix}-images-idx3-ubyte', img), (f'{prefix}-labels-idx1-ubyte', lab)):
            if gz:
                with gzip.open(folder / (name + '.gz'), 'wb') as f: f.write(blob)
            else: (folder / name).write_bytes(blob)
    return imgs

def test_mnist_gz_is_unpacked_into_the_cache_not_the_root(tmp_path, monkeypatch):
    cache = tmp_path / 'cache'; monkeypatch.setenv('DINOF_DATA', str(cache))
    user = tmp_path / 'user'; imgs = _fake_idx(user)
    before = sorted(p.name for p in user.iterdir())
    ds = get_dataset('mnist', root=user, split='test', image_size=32)
    assert sorted(p.name for p in user.iterdir()) == before          # nothing written into the user's folder
    assert len(list(cache.glob('unpacked/MNIST-*/MNIST/raw/t10k-images-idx3-ubyte'))) == 1
    assert len(ds) == 5 and ds.shape == (1, 32, 32)
    assert torch.equal(ds[3][0, 2:-2, 2:-2], torch.from_numpy(imgs['t10k'][3]).float() / 255)
    # an un-gzipped torchvision layout under the root is used in place
    tv = tmp_path / 'tv'; _fake_idx(tv / 'MNIST' / 'raw', gz=False)
    shutil.rmtree(cache)
    assert len(get_dataset('mnist', root=tv)) == 5 and not cache.exists()

def test_two_roots_never_share_an_unpacked_copy(tmp_path, monkeypatch):
    "Two --data-root folders of gzipped files: each gets its own images (the older one used to be served the newer's copy)."
    monkeypatch.setenv('DINOF_DATA', str(tmp_path / 'cache'))
    a, b = _fake_idx(tmp_path / 'a', seed=1), _fake_idx(tmp_path / 'b', seed=2)
    for f in (tmp_path / 'b').iterdir(): os.utime(f, (1e9, 1e9))        # b's files are older than a's copy
    da, db = get_dataset('mnist', root=tmp_path / 'a', split='test'), get_dataset('mnist', root=tmp_path / 'b', split='test')
    assert torch.equal(da.data[:, 0], torch.from_numpy(a['t10k'])) and torch.equal(db.data[:, 0], torch.from_numpy(b['t10k']))
    assert da.fingerprint() != db.fingerprint()


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setenv('DINOF_DATA', str(tmp_path / 'cache'))
    with pytest.raises(FileNotFoundError) as e: get_dataset('cifar10', root=tmp_path / 'x')
    msg = str(e.value)
    assert msg.count('\n') == 0 and str(tmp_path / 'x') in msg and 'download=True' in msg and '--data-root' in msg

@pytest.mark.skipif(_find_files(_DEBIAN['fashion_mnist']) is None, reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv('DINOF_DATA', str(tmp_path))
    ds = get_dataset('fashion_mnist', split='test')
    assert len(ds) == 10000 and ds.shape == (1, 28, 28)
    x = next(iter(get_loader(ds, 16, seed=0)))
    assert x.shape == (16, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
