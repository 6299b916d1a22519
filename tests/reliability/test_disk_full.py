"""2. Disk full / unwritable. A resumed `dinof train` (in this process, through `dinof.cli.main`) whose next checkpoint
write fails: the file system fills up (a 9 MB tmpfs, where mounting is allowed), the file-size limit is hit
(RLIMIT_FSIZE, what a quota does; works anywhere, also as root, where read-only folders do not stop writes), or the
rename fails (the file system turns read-only under the run). Each must leave every earlier checkpoint byte for byte as
it was, `latest` naming the newest of them, no temporary file behind, and a resume from there must work; and the
user must get one line naming the problem, exit status 2, no traceback."""
import contextlib, errno, os, shutil
from pathlib import Path
import pytest
from harness import TOY, audit, clean_error, count, file_size_limit, lost, run_main, sets, snapshot, tmpfs

def _resume_args(wd, n_iters=24):
    return ['train', '--preset', 'toy2d', '--no-progress', '--resume', '--workdir', wd,
            *sets(*TOY, 'training.snapshot_freq=8', f'training.n_iters={n_iters}')]

@pytest.fixture(scope='module', params=['tmpfs', 'rlimit', 'read-only rename'])
def failed_write(request, toy_run, tmp_path_factory):
    "The toy run (checkpoints 8, 16) resumed to step 24, whose checkpoint write fails; `(mode, wd, before, (rc, out, err))`."
    mode, src = request.param, toy_run[0]
    wd = tmp_path_factory.mktemp(mode.replace(' ', '_')) / 'wd'
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as stack:
        if mode == 'tmpfs': stack.enter_context(tmpfs(wd, '9m'))   # two checkpoints (3.4 MB each) fit, a third does not
        else: wd.mkdir()
        for p in src.iterdir(): shutil.copy2(p, wd / p.name)
        before = snapshot(wd)
        if mode == 'read-only rename':
            real = os.replace
            def replace(a, b, **kw):
                if str(b).endswith('.pt'): raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(a), None, str(b))
                return real(a, b, **kw)
            mp.setattr(os, 'replace', replace)
        if mode == 'rlimit':
            with file_size_limit(1_000_000): res = _main(_resume_args(wd))
        else: res = _main(_resume_args(wd))
        mp.undo()
        yield mode, wd, before, snapshot(wd), audit(wd), res

def _main(argv):
    "`harness.run_main` for a module-scoped fixture (capsys is per test): stdout / stderr captured by swapping sys's streams."
    import io, traceback
    from dinof.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main([str(a) for a in argv])
        except SystemExit as e: rc = e.code
        except BaseException: rc = 'traceback'; err.write(traceback.format_exc())
    return rc, out.getvalue(), err.getvalue()

def test_the_previous_checkpoints_are_kept(failed_write):
    mode, wd, before, files, after, (rc, out, err) = failed_write
    assert rc != 0, (rc, out, err)
    changed = [k for k in before if k != 'log.jsonl' and files.get(k) != before[k]]
    lost(len(changed) + len(after['bad']), f'{mode}: changed {changed}, unloadable {after["bad"]}')
    assert not changed and not after['bad'], (changed, after)
    assert after['steps'] == [8, 16] and after['latest'] == 16 and not after['tmp'], after
    assert not any(n.startswith('ckpt_00000024') for n in files), 'a partial checkpoint was left behind'

def test_a_resume_after_the_failure_continues(failed_write, tmp_path, capsys):
    mode, wd, *_ = failed_write
    wd2 = tmp_path / 'wd'; shutil.copytree(wd, wd2)      # off the full file system
    rc, out, err = run_main(_resume_args(wd2), capsys)
    assert rc == 0, err
    assert audit(wd2)['latest'] == 24

# torch.save into a full file raises RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos ..."), the
# OSError in its context: dinof.train.atomic_write reports that OSError, naming the file (was a traceback)
def test_the_failure_is_one_line_exit_2(failed_write):
    mode, wd, before, files, after, (rc, out, err) = failed_write
    why = {'tmpfs': 'No space left on device', 'rlimit': 'File too large', 'read-only rename': 'Read-only file system'}[mode]
    ok = clean_error(rc, err) and why in err and 'ckpt_00000024' in err
    count('bad inputs', ok, f'{mode}: status {rc}, {err.strip().splitlines()[-1] if err.strip() else ""!r}')
    assert ok, (rc, err)
