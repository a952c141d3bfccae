"""Inside the sandbox, before the program: set the rlimits, drop to the run's user, then exec the program.

Standard library only; run as `python -I -S launcher.py SPEC_JSON`. SPEC_JSON holds "limits" (resource name ->
value), "uid"/"gid" (or null to keep the current user), "status_fd" and "argv".

The status pipe tells the host whether the program really started: the launcher writes b"R" just before `execv`, and
b"E<reason>" if setting up or the exec itself fails. The pipe is close-on-exec, so the program never holds it. No b"R"
means the sandbox failed (an infrastructure error, retried), never the program.
"""

import json
import os
import resource
import sys


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _in_new_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as handle:
            return handle.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def main() -> None:
    spec = json.loads(sys.argv[1])
    status = spec["status_fd"]
    os.set_inheritable(status, False)
    try:
        limits = dict(spec["limits"])
        uid = spec["uid"]
        nproc = limits.pop("NPROC", None)
        if nproc is not None and uid is None and os.getuid() != 0 and not _in_new_user_namespace():
            # RLIMIT_NPROC counts every process of the user; without a user of its own the run gets headroom
            # above what the user already runs.
            nproc += _processes_of(os.getuid())
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if uid is not None:
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError("could not drop to the run's user")
        os.closerange(3, status)
        os.closerange(status + 1, 65536)
        argv = spec["argv"]
        os.write(status, b"R")
        os.execv(argv[0], argv)
    except BaseException as error:
        os.write(status, b"E" + f"{type(error).__name__}: {error}".encode()[:4000])
        os._exit(127)


main()
