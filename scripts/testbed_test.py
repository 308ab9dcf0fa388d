"""Offline tests of the test bed's package check (no apt-get, no root needed):

  python3 scripts/testbed_test.py
"""
import os
import sys
import tempfile
import unittest
from unittest import mock

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testbed_packages as packages  # noqa: E402
from testbed_core import TestbedError  # noqa: E402


class MissingPackages(unittest.TestCase):
    """What a fresh machine lacks: an empty PATH, no PostgreSQL under /usr/lib."""

    def setUp(self):
        empty = tempfile.mkdtemp(prefix="kh-testbed-test.")
        self.addCleanup(os.rmdir, empty)
        for patch in (mock.patch.dict(os.environ, {"PATH": empty}),
                      mock.patch.object(packages, "PG_SERVERS", os.path.join(empty, "*", "postgres"))):
            patch.start()
            self.addCleanup(patch.stop)
        os.environ.pop("JAVA_HOME", None)

    def test_a_fresh_machine_needs_everything(self):
        self.assertEqual(packages.missing(also=[("promtool", "prometheus")]),
                         ["default-jre-headless", "maven", "redis-server", "redis-tools", "postgresql",
                          "prometheus"])

    def test_only_what_the_components_use(self):
        self.assertEqual(packages.missing(redis=False, redis_cluster=False, postgres=False, maven=False),
                         ["default-jre-headless"])
        self.assertEqual(packages.missing(redis=True, redis_cluster=False, postgres=False, maven=False),
                         ["default-jre-headless", "redis-server"])

    def test_programs_on_path_are_not_installed(self):
        bindir = os.environ["PATH"]
        for program in ("java", "mvn", "redis-server", "redis-cli", "postgres"):
            path = os.path.join(bindir, program)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o755)
            self.addCleanup(os.unlink, path)
        self.assertEqual(packages.missing(also=[("promtool", "prometheus"), ("promtool", "prometheus")]),
                         ["prometheus"])


class InstallSteps(unittest.TestCase):
    def steps(self, root, policy_exists):
        with tempfile.TemporaryDirectory() as d:
            policy = os.path.join(d, "policy-rc.d")
            if policy_exists:
                open(policy, "w").close()
            with mock.patch.object(packages, "POLICY_RC_D", policy):
                steps, cleanup = packages.install_steps(["redis-server", "postgresql"], root)
        return [cmd for cmd, _ in steps], [cmd for cmd, _ in cleanup], policy

    def test_services_are_kept_from_starting_and_apt_asks_nothing(self):
        steps, cleanup, policy = self.steps(root=True, policy_exists=False)
        self.assertEqual(steps[0][:2], ["sh", "-c"])
        self.assertIn("exit 101", steps[0][2])
        self.assertIn(policy, steps[0][2])
        self.assertEqual(steps[-1][:3], ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"])
        self.assertEqual(steps[-1][5:], ["install", "-y", "-qq", "--no-install-recommends", "redis-server",
                                         "postgresql"])
        self.assertEqual(cleanup, [["rm", "-f", policy]])

    def test_an_existing_policy_is_left_alone(self):
        steps, cleanup, _ = self.steps(root=True, policy_exists=True)
        self.assertEqual([s[5] for s in steps], ["update", "install"])
        self.assertEqual(cleanup, [])

    def test_sudo_when_not_root(self):
        steps, cleanup, _ = self.steps(root=False, policy_exists=False)
        self.assertTrue(all(cmd[0] == "sudo" for cmd in steps + cleanup))

    def test_not_root_and_no_sudo_fails_before_running_anything(self):
        with mock.patch.object(os, "geteuid", return_value=1000), \
                mock.patch.object(packages, "on_path", return_value=False), \
                mock.patch.object(packages, "run") as run:
            with self.assertRaisesRegex(TestbedError, "neither root nor sudo"):
                packages.ensure(["redis-server"])
            run.assert_not_called()

    def test_the_policy_goes_away_when_the_install_fails(self):
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.object(packages, "POLICY_RC_D", os.path.join(d, "policy-rc.d")), \
                mock.patch.object(os, "geteuid", return_value=0), \
                mock.patch.object(packages, "run", side_effect=[None, TestbedError("no network"), None]) as run:
            with self.assertRaises(TestbedError):
                packages.ensure(["redis-server"])
            self.assertEqual(run.call_args_list[-1].args[0][:2], ["rm", "-f"])


if __name__ == "__main__":
    unittest.main()
