// See shared_memory.h.
#include "shared_memory.h"

#include <cuda.h>  // driver API types only; the functions are looked up in libcuda (see DriverApi)
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <unistd.h>

namespace gs {
namespace {

// The driver entry points this file uses, from libcuda.so.1.
struct DriverApi {
    CUresult (*get_granularity)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags) = nullptr;
    CUresult (*create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*, unsigned long long) = nullptr;
    CUresult (*reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) = nullptr;
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long) = nullptr;
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;
    CUresult (*export_handle)(void*, CUmemGenericAllocationHandle, CUmemAllocationHandleType,
                              unsigned long long) = nullptr;
    CUresult (*unmap)(CUdeviceptr, size_t) = nullptr;
    CUresult (*release)(CUmemGenericAllocationHandle) = nullptr;
    CUresult (*address_free)(CUdeviceptr, size_t) = nullptr;
    CUresult (*error_string)(CUresult, const char**) = nullptr;
    std::string missing;  // why the table is incomplete ("" when every entry was found)
};

template <typename Fn>
void find(void* lib, const char* name, Fn* fn, std::string* missing) {
    *fn = reinterpret_cast<Fn>(dlsym(lib, name));
    if (*fn == nullptr && missing->empty()) *missing = std::string("libcuda.so.1 has no ") + name;
}

const DriverApi& driver() {
    static const DriverApi api = [] {
        DriverApi d;
        void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr) {
            d.missing = std::string("cannot open libcuda.so.1: ") + dlerror();
            return d;
        }
        find(lib, "cuMemGetAllocationGranularity", &d.get_granularity, &d.missing);
        find(lib, "cuMemCreate", &d.create, &d.missing);
        find(lib, "cuMemAddressReserve", &d.reserve, &d.missing);
        find(lib, "cuMemMap", &d.map, &d.missing);
        find(lib, "cuMemSetAccess", &d.set_access, &d.missing);
        find(lib, "cuMemExportToShareableHandle", &d.export_handle, &d.missing);
        find(lib, "cuMemUnmap", &d.unmap, &d.missing);
        find(lib, "cuMemRelease", &d.release, &d.missing);
        find(lib, "cuMemAddressFree", &d.address_free, &d.missing);
        find(lib, "cuGetErrorString", &d.error_string, &d.missing);
        return d;
    }();
    return api;
}

std::string describe(const DriverApi& d, const char* call, CUresult result) {
    const char* text = nullptr;
    if (d.error_string != nullptr) d.error_string(result, &text);
    return std::string(call) + " failed: " + (text != nullptr ? text : "error ") +
           (text != nullptr ? "" : std::to_string(static_cast<int>(result)));
}

}  // namespace

std::string shared_allocate(size_t bytes, int device, SharedAllocation* out, int* fd) {
    const DriverApi& d = driver();
    if (!d.missing.empty()) return d.missing;
    if (bytes == 0) return "shared_allocate: 0 bytes requested";
    cudaSetDevice(device);
    cudaFree(nullptr);  // make the device's primary context current for the driver calls
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    size_t granularity = 0;
    CUresult r = d.get_granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (r != CUDA_SUCCESS) return describe(d, "cuMemGetAllocationGranularity", r);
    const size_t size = (bytes + granularity - 1) / granularity * granularity;
    CUmemGenericAllocationHandle handle = 0;
    r = d.create(&handle, size, &prop, 0);
    if (r != CUDA_SUCCESS) return describe(d, "cuMemCreate", r);
    CUdeviceptr address = 0;
    r = d.reserve(&address, size, granularity, 0, 0);
    if (r != CUDA_SUCCESS) {
        d.release(handle);
        return describe(d, "cuMemAddressReserve", r);
    }
    r = d.map(address, size, 0, handle, 0);
    std::string error = r != CUDA_SUCCESS ? describe(d, "cuMemMap", r) : "";
    if (error.empty()) {
        CUmemAccessDesc access{};
        access.location = prop.location;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = d.set_access(address, size, &access, 1);
        if (r != CUDA_SUCCESS) error = describe(d, "cuMemSetAccess", r);
    }
    int exported = -1;
    if (error.empty()) {
        r = d.export_handle(&exported, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        if (r != CUDA_SUCCESS) error = describe(d, "cuMemExportToShareableHandle", r);
    }
    SharedAllocation allocation{static_cast<uint64_t>(handle), static_cast<uint64_t>(address), size, device};
    if (!error.empty()) {
        shared_free(allocation);  // unmapping a range that was never mapped only returns an error
        return error;
    }
    *out = allocation;
    *fd = exported;
    return "";
}

std::string shared_free(const SharedAllocation& a) {
    const DriverApi& d = driver();
    if (!d.missing.empty()) return d.missing;
    std::string error;
    const auto address = static_cast<CUdeviceptr>(a.address);
    if (address != 0) {
        const CUresult r = d.unmap(address, a.size);
        if (r != CUDA_SUCCESS && r != CUDA_ERROR_INVALID_VALUE) error = describe(d, "cuMemUnmap", r);
        const CUresult f = d.address_free(address, a.size);
        if (f != CUDA_SUCCESS && error.empty()) error = describe(d, "cuMemAddressFree", f);
    }
    if (a.handle != 0) {
        const CUresult r = d.release(static_cast<CUmemGenericAllocationHandle>(a.handle));
        if (r != CUDA_SUCCESS && error.empty()) error = describe(d, "cuMemRelease", r);
    }
    return error;
}

}  // namespace gs
