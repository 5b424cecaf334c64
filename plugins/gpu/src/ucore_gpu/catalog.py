"""The NVIDIA driver's user-space files: which libraries, utilities and loader files a
container gets, with the breadth of NVIDIA's container toolkit and Apptainer's ``nvliblist``.

Libraries are named without their version; the files taken are those of the running driver
(``libcuda.so.<driver version>``), so a copy an older driver left behind is never bound. The
``UNVERSIONED`` ones carry a version of their own and are taken as found.
"""

from __future__ import annotations

#: Compute: CUDA, NVML, the PTX JIT, NVVM, OpenCL, the GSP-era compiler and helpers.
COMPUTE = (
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-cfg.so",
    "libnvidia-allocator.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-sandboxutils.so",
    "libnvidia-compiler.so",
    "libnvidia-fatbinaryloader.so",
)
#: Video encode and decode.
VIDEO = (
    "libnvcuvid.so",
    "libnvidia-encode.so",
    "libnvidia-opticalflow.so",
    "libvdpau_nvidia.so",
)
#: Graphics: GLX, EGL, GLES, Vulkan, OptiX and ray tracing, NGX, frame capture.
GRAPHICS = (
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLESv1_CM_nvidia.so",
    "libnvidia-eglcore.so",
    "libnvidia-glcore.so",
    "libnvidia-glsi.so",
    "libnvidia-tls.so",
    "libnvidia-glvkspirv.so",
    "libnvidia-rtcore.so",
    "libnvoptix.so",
    "libnvidia-ngx.so",
    "libnvidia-fbc.so",
    "libnvidia-ifr.so",
    "libnvidia-api.so",
    "libnvidia-vulkan-producer.so",
    "libnvidia-wayland-client.so",
)
LIBRARIES = COMPUTE + VIDEO + GRAPHICS
#: Companions versioned apart from the driver (EGL external platforms).
UNVERSIONED = (
    "libnvidia-egl-wayland.so",
    "libnvidia-egl-gbm.so",
    "libnvidia-egl-xcb.so",
    "libnvidia-egl-xlib.so",
)
#: Development names programs open besides the soname (``dlopen("libcuda.so")``, ``-lcuda``).
DEV_NAMES = ("libcuda.so", "libnvidia-ml.so")

UTILITIES = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
    "nvidia-imex",
    "nvidia-imex-ctl",
)
#: Where utilities live on the hosts we know.
BIN_DIRS = ("/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/usr/local/sbin", "/sbin")
#: Library directories scanned besides the linker cache (Debian keeps the driver in
#: ``nvidia/current``, reached through its alternatives).
LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64/nvidia",
)
#: Loader description files (ICDs) and where their loaders are told to look instead of the
#: image's own directories: (host path, file name in the private directory, variable).
ICDS = (
    ("/etc/OpenCL/vendors/nvidia.icd", "etc/OpenCL/vendors/nvidia.icd", "OCL_ICD_VENDORS"),
    ("/usr/share/vulkan/icd.d/nvidia_icd.json", "share/vulkan/icd.d/nvidia_icd.json", "VK"),
    ("/etc/vulkan/icd.d/nvidia_icd.json", "share/vulkan/icd.d/nvidia_icd.json", "VK"),
    (
        "/usr/share/vulkan/implicit_layer.d/nvidia_layers.json",
        "share/vulkan/implicit_layer.d/nvidia_layers.json",
        "VK_ADD_LAYER_PATH",
    ),
    (
        "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
        "share/glvnd/egl_vendor.d/10_nvidia.json",
        "__EGL_VENDOR_LIBRARY_DIRS",
    ),
    (
        "/usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json",
        "share/egl/egl_external_platform.d/10_nvidia_wayland.json",
        "__EGL_EXTERNAL_PLATFORM_CONFIG_DIRS",
    ),
    (
        "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
        "share/egl/egl_external_platform.d/15_nvidia_gbm.json",
        "__EGL_EXTERNAL_PLATFORM_CONFIG_DIRS",
    ),
)
#: Sockets of the driver's daemons, bound where the host has them.
SOCKETS = (
    "/run/nvidia-persistenced/socket",
    "/run/nvidia-fabricmanager/socket",
    "/run/nvidia-mps",
)
#: Control nodes, bound with every selection.
CONTROL = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


def library_name(filename: str) -> str | None:
    """The catalogue name (``libcuda.so``) a file name belongs to, or None."""
    stem, sep, _ = filename.partition(".so")
    if not sep:
        return None
    name = stem + ".so"
    return name if name in LIBRARIES or name in UNVERSIONED else None


def of_driver(filename: str, driver: str) -> bool:
    """Whether a library file is the running driver's: ``<name>.so.<driver version>``, or an
    unversioned companion."""
    name = library_name(filename)
    if name is None:
        return False
    return name in UNVERSIONED or filename == f"{name}.{driver}"
