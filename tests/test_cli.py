"The installed console script, run as a user runs it."
import os, subprocess, sys, sysconfig
import dinof

def dinof_cmd(*args):
    exe = os.path.join(sysconfig.get_path('scripts'), 'dinof')
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)

def test_version():
    r = dinof_cmd('--version')
    assert r.returncode == 0 and r.stdout.strip() == f'dinof {dinof.__version__}'

def test_help():
    r = dinof_cmd('--help')
    assert r.returncode == 0 and 'usage: dinof' in r.stdout

def test_no_command_prints_help():
    r = dinof_cmd()
    assert r.returncode == 0 and 'usage: dinof' in r.stdout

def test_unknown_command_is_one_line_exit_2():
    r = dinof_cmd('no-such-command')
    assert r.returncode == 2
    assert r.stderr.startswith('dinof: error:') and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr
