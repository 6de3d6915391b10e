// Torch glue of the viewer's CUDA path: display packing (gl_interop.cu) into a tensor or straight into a GL texture
// through CUDA-GL interop.
//
// Interop: a GL texture (RGBA8, made by moderngl in the caller's context) is registered once with
// cudaGraphicsGLRegisterImage(SurfaceLoadStore); each write maps it on the current torch stream (GL work queued
// before it completes first), binds the mapped array to a surface object (cached while the array stays the same),
// launches the packing kernel on that stream and unmaps it on that stream (GL work queued after it waits for the
// kernel). No host synchronisation per frame. The GL context must be current on the calling thread for
// register / write / unregister. cuda_gl_interop.h needs the GL headers, which CUDA machines often lack, so the two
// GL-specific entry points are declared here (GLuint and GLenum are unsigned int; the device-list enum is an int).
#include <cstdint>
#include <vector>

#include "gl_interop.h"
#include "ops.h"
#include "shared_memory.h"
#include "torch_glue.h"

extern "C" {
cudaError_t cudaGraphicsGLRegisterImage(struct cudaGraphicsResource** resource, unsigned int image,
                                        unsigned int target, unsigned int flags);
cudaError_t cudaGLGetDevices(unsigned int* pCudaDeviceCount, int* pCudaDevices, unsigned int cudaDeviceCount,
                             int deviceList);
}

namespace gs {
namespace {

constexpr unsigned int kGlTexture2D = 0x0DE1;   // GL_TEXTURE_2D
constexpr int kGlDeviceListAll = 1;             // cudaGLDeviceListAll

struct GLImage {
    cudaGraphicsResource_t resource = nullptr;
    cudaArray_t array = nullptr;           // the array the cached surface is bound to
    cudaSurfaceObject_t surface = 0;
    cudaStream_t stream = nullptr;         // stream of the last write (synchronised before the surface goes)
    int device = 0;
    int64_t width = 0, height = 0;
};

GLImage* as_image(int64_t handle) {
    TORCH_CHECK(handle != 0, "gl interop: null image handle");
    return reinterpret_cast<GLImage*>(static_cast<intptr_t>(handle));
}

// Clears the runtime's last-error slot (interop failures are not sticky; later torch launch checks must not see
// them) and returns "name: description".
std::string take_error(cudaError_t err) {
    (void)cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

const at::Tensor* first_present(const std::optional<at::Tensor>& image, const std::optional<at::Tensor>& alpha,
                                const std::optional<at::Tensor>& depth) {
    for (const auto* t : {&image, &alpha, &depth}) {
        if (present(*t)) return &t->value();
    }
    return nullptr;
}

// Checks the inputs of one display write and fills the kernel arguments.
DisplayArgs display_args(const std::optional<at::Tensor>& image, const std::optional<at::Tensor>& alpha,
                         const std::optional<at::Tensor>& depth, int64_t mode, int64_t layout,
                         c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span, at::Device* device) {
    TORCH_CHECK(mode == kDisplayRgb || mode == kDisplayDepth || mode == kDisplayAlpha,
                "display: mode must be 0 (rgb), 1 (depth) or 2 (alpha), got ", mode);
    TORCH_CHECK(layout == kLayoutMono || layout == kLayoutSideBySide || layout == kLayoutAnaglyph,
                "display: layout must be 0 (mono), 1 (side by side) or 2 (anaglyph), got ", layout);
    const bool need_image = mode == kDisplayRgb, need_alpha = mode != kDisplayRgb, need_depth = mode == kDisplayDepth;
    TORCH_CHECK(!need_image || present(image), "display: rgb mode needs the image");
    TORCH_CHECK(!need_alpha || present(alpha), "display: depth and alpha modes need the alpha");
    TORCH_CHECK(!need_depth || present(depth), "display: depth mode needs the depth");
    const at::Tensor* ref = first_present(image, alpha, depth);
    TORCH_CHECK(ref != nullptr, "display: no input tensor");
    TORCH_CHECK(ref->dim() == 4, "display: inputs must be [C, H, W, k], got ", ref->sizes());
    const int64_t C = ref->size(0), H = ref->size(1), W = ref->size(2);
    TORCH_CHECK(C == 1 || C == 2, "display: 1 or 2 eyes expected, got ", C);
    TORCH_CHECK(layout == kLayoutMono || C == 2, "display: stereo layouts need 2 eyes, got ", C);
    TORCH_CHECK(H > 0 && W > 0 && H <= 65535 && W <= 32767, "display: bad eye size ", W, "x", H);
    DisplayArgs a{};
    if (need_image) {
        GS_CHECK_FLOAT(*image);
        GS_CHECK_SHAPE(*image, C, H, W, 3);
        GS_CHECK_SAME_DEVICE(*image, *ref);
        a.image = image->data_ptr<float>();
    }
    if (need_alpha) {
        GS_CHECK_FLOAT(*alpha);
        GS_CHECK_SHAPE(*alpha, C, H, W, 1);
        GS_CHECK_SAME_DEVICE(*alpha, *ref);
        a.alpha = alpha->data_ptr<float>();
    }
    if (need_depth) {
        GS_CHECK_FLOAT(*depth);
        GS_CHECK_SHAPE(*depth, C, H, W, 1);
        GS_CHECK_SAME_DEVICE(*depth, *ref);
        a.depth = depth->data_ptr<float>();
        TORCH_CHECK(static_cast<int64_t>(depth_lo.size()) >= C && static_cast<int64_t>(depth_span.size()) >= C,
                    "display: depth mode needs a depth range per eye");
    }
    a.eyes = static_cast<int>(C);
    a.width = static_cast<int>(W);
    a.height = static_cast<int>(H);
    a.mode = static_cast<int>(mode);
    a.layout = static_cast<int>(layout);
    for (int e = 0; e < 2; ++e) {
        a.depth_lo[e] = e < static_cast<int>(depth_lo.size()) ? static_cast<float>(depth_lo[e]) : 0.0f;
        a.depth_span[e] = e < static_cast<int>(depth_span.size()) ? static_cast<float>(depth_span[e]) : 1.0f;
    }
    *device = ref->device();
    return a;
}

}  // namespace

at::Tensor display_pack_op(const std::optional<at::Tensor>& image, const std::optional<at::Tensor>& alpha,
                           const std::optional<at::Tensor>& depth, int64_t mode, int64_t layout,
                           c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span) {
    at::Device device(at::kCPU);
    const DisplayArgs a = display_args(image, alpha, depth, mode, layout, depth_lo, depth_span, &device);
    const c10::cuda::CUDAGuard guard(device);
    at::Tensor out = at::empty({a.height, display_width(a), 4}, at::TensorOptions().dtype(at::kByte).device(device));
    check_status(display_to_buffer(a, out.data_ptr<uint8_t>(), current_stream()), "display_pack");
    return out;
}

void display_pack_to_op(int64_t address, int64_t capacity, const std::optional<at::Tensor>& image,
                        const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& depth, int64_t mode,
                        int64_t layout, c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span) {
    at::Device device(at::kCPU);
    const DisplayArgs a = display_args(image, alpha, depth, mode, layout, depth_lo, depth_span, &device);
    TORCH_CHECK(device.is_cuda(), "display_pack_to: the inputs must be on a CUDA device, got ", device);
    TORCH_CHECK(address != 0, "display_pack_to: null address");
    const int64_t bytes = static_cast<int64_t>(display_width(a)) * a.height * 4;
    TORCH_CHECK(bytes <= capacity, "display_pack_to: a ", display_width(a), "x", a.height, " display needs ", bytes,
                " bytes, the buffer has ", capacity);
    const c10::cuda::CUDAGuard guard(device);
    check_status(display_to_buffer(a, reinterpret_cast<unsigned char*>(static_cast<uintptr_t>(address)),
                                   current_stream()),
                 "display_pack_to");
}

std::tuple<int64_t, int64_t, int64_t, int64_t> shared_allocate_op(int64_t bytes, int64_t device) {
    TORCH_CHECK(bytes > 0, "shared_allocate: expected a positive size, got ", bytes);
    TORCH_CHECK(device >= 0, "shared_allocate: bad device ", device);
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    auto* allocation = new SharedAllocation();
    int fd = -1;
    const std::string error = shared_allocate(static_cast<size_t>(bytes), static_cast<int>(device), allocation, &fd);
    if (!error.empty()) {
        delete allocation;
        TORCH_CHECK(false, "shared_allocate(", bytes, " bytes on cuda:", device, "): ", error);
    }
    return {static_cast<int64_t>(reinterpret_cast<intptr_t>(allocation)), fd,
            static_cast<int64_t>(allocation->size), static_cast<int64_t>(allocation->address)};
}

void shared_free_op(int64_t handle) {
    TORCH_CHECK(handle != 0, "shared_free: null handle");
    auto* allocation = reinterpret_cast<SharedAllocation*>(static_cast<intptr_t>(handle));
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(allocation->device));
    const cudaError_t sync = cudaDeviceSynchronize();  // no kernel may still write into it
    if (sync != cudaSuccess) (void)cudaGetLastError();
    const std::string error = shared_free(*allocation);
    delete allocation;
    TORCH_CHECK(error.empty(), "shared_free: ", error);
}

std::tuple<int64_t, std::vector<int64_t>> gl_cuda_devices_op() {
    unsigned int count = 0;
    int devices[16] = {};
    const cudaError_t err = cudaGLGetDevices(&count, devices, 16, kGlDeviceListAll);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return {static_cast<int64_t>(err), {}};
    }
    std::vector<int64_t> out;
    for (unsigned int i = 0; i < count && i < 16; ++i) out.push_back(devices[i]);
    return {0, out};
}

int64_t gl_register_image_op(int64_t texture, int64_t width, int64_t height, int64_t device) {
    TORCH_CHECK(texture > 0 && width > 0 && height > 0, "gl_register_image: bad texture ", texture, " or size ",
                width, "x", height);
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    cudaGraphicsResource_t resource = nullptr;
    const cudaError_t err = cudaGraphicsGLRegisterImage(&resource, static_cast<unsigned int>(texture), kGlTexture2D,
                                                        cudaGraphicsRegisterFlagsSurfaceLoadStore);
    TORCH_CHECK(err == cudaSuccess, "cudaGraphicsGLRegisterImage(texture ", texture, ") failed: ", take_error(err));
    const cudaError_t hint = cudaGraphicsResourceSetMapFlags(resource, cudaGraphicsMapFlagsWriteDiscard);
    if (hint != cudaSuccess) (void)cudaGetLastError();  // only a hint: every write covers the whole texture
    auto* img = new GLImage();
    img->resource = resource;
    img->device = static_cast<int>(device);
    img->width = width;
    img->height = height;
    return static_cast<int64_t>(reinterpret_cast<intptr_t>(img));
}

void gl_unregister_image_op(int64_t handle) {
    GLImage* img = as_image(handle);
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(img->device));
    cudaError_t err = cudaSuccess;
    if (img->stream != nullptr) err = cudaStreamSynchronize(img->stream);  // no kernel may still use the surface
    if (img->surface != 0) {
        const cudaError_t e = cudaDestroySurfaceObject(img->surface);
        err = err == cudaSuccess ? e : err;
    }
    const cudaError_t e = cudaGraphicsUnregisterResource(img->resource);
    err = err == cudaSuccess ? e : err;
    delete img;
    TORCH_CHECK(err == cudaSuccess, "gl_unregister_image failed: ", take_error(err));
}

void gl_write_display_op(int64_t handle, const std::optional<at::Tensor>& image,
                         const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& depth, int64_t mode,
                         int64_t layout, c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span) {
    GLImage* img = as_image(handle);
    at::Device device(at::kCPU);
    const DisplayArgs a = display_args(image, alpha, depth, mode, layout, depth_lo, depth_span, &device);
    TORCH_CHECK(device.is_cuda() && device.index() == img->device, "gl_write_display: inputs on ", device,
                " but the texture was registered on cuda:", img->device);
    TORCH_CHECK(display_width(a) == img->width && a.height == img->height, "gl_write_display: a ", display_width(a),
                "x", a.height, " display does not fit the ", img->width, "x", img->height, " texture");
    const c10::cuda::CUDAGuard guard(device);
    const auto stream = static_cast<cudaStream_t>(current_stream());
    cudaError_t err = cudaGraphicsMapResources(1, &img->resource, stream);
    TORCH_CHECK(err == cudaSuccess, "cudaGraphicsMapResources failed: ", take_error(err));
    cudaArray_t array = nullptr;
    err = cudaGraphicsSubResourceGetMappedArray(&array, img->resource, 0, 0);
    if (err == cudaSuccess && array != img->array) {  // (re)bind the surface; the old one may still be in use
        if (img->surface != 0) {
            if (img->stream != nullptr) err = cudaStreamSynchronize(img->stream);
            (void)cudaDestroySurfaceObject(img->surface);
            img->surface = 0;
            img->array = nullptr;
        }
        if (err == cudaSuccess) {
            cudaResourceDesc desc{};
            desc.resType = cudaResourceTypeArray;
            desc.res.array.array = array;
            err = cudaCreateSurfaceObject(&img->surface, &desc);
            if (err == cudaSuccess) img->array = array;
        }
    }
    if (err == cudaSuccess) err = static_cast<cudaError_t>(display_to_surface(a, img->surface, stream));
    if (err == cudaSuccess) img->stream = stream;
    const cudaError_t unmap = cudaGraphicsUnmapResources(1, &img->resource, stream);
    TORCH_CHECK(err == cudaSuccess, "gl_write_display failed: ", take_error(err));
    TORCH_CHECK(unmap == cudaSuccess, "cudaGraphicsUnmapResources failed: ", take_error(unmap));
    if (debug_sync()) check_status(0, "gl_write_display");
}

}  // namespace gs
