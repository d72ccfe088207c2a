"""Issue 10's interrupt check: an uninterrupted `cargo test --test codegen`, then a run
interrupted by Ctrl-C (SIGINT to cargo's process group, as a terminal sends it) at a random
point while the model generates (CODEGEN_NO_CACHE=1), then a rerun. Prints whether the last
complete run's files survived the interrupt and which files of the rerun differ from the
uninterrupted run's (none, when it works).

    python3 harness/python/interrupt_check.py      # from anywhere in the checkout
"""
import filecmp, os, random, shutil, signal, subprocess, tempfile, time
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FULL = os.path.join(tempfile.mkdtemp(prefix="codegen-interrupt-"), "full")


def run():
    return subprocess.run(["cargo", "test", "--test", "codegen", "-q"], capture_output=True).returncode
print("uninterrupted run: rc=%d" % run())
shutil.rmtree(FULL, ignore_errors=True); shutil.copytree("target/codegen", FULL)
# Generation not cached for the interrupted run, so the interrupt lands while the model works.
p = subprocess.Popen(["cargo", "test", "--test", "codegen", "-q"], start_new_session=True,
                     env=dict(os.environ, CODEGEN_NO_CACHE="1"),
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
delay = round(random.uniform(5, 40), 2)
time.sleep(delay)
os.killpg(p.pid, signal.SIGINT)
rc = p.wait()
time.sleep(1)
print("Ctrl-C after %.2fs: cargo rc=%s" % (delay, rc))
partial = [f for f in os.listdir("target/codegen") if f.endswith(".partial.jsonl")]
print("partial journals left by the interrupted run:", partial)
left = subprocess.run(["pgrep", "-f", "deps/codegen-"], capture_output=True, text=True).stdout.split()
print("harness processes still running:", len(left))
def same(a, b, skip):
    names = sorted(set(os.listdir(a)) | set(os.listdir(b)))
    diff = [n for n in names if not any(n.endswith(s) for s in skip)
            and not (os.path.exists(os.path.join(a, n)) and os.path.exists(os.path.join(b, n))
                     and filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False))]
    return diff
print("files of the last complete run changed by the interrupt:", same(FULL, "target/codegen", ["report.html", ".partial.jsonl"]))
print("rerun: rc=%d" % run())
print("rerun vs uninterrupted, files that differ:", same(FULL, "target/codegen", ["report.html"]))
