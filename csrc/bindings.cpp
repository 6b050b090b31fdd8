// qrerank._topk: the pybind11 module. Device pointers, strides, the dtype and the CUDA stream cross as
// plain integers and strings, so the module needs neither torch's headers nor its C++ ABI and works with
// any torch version. qrerank/topk.py is the only intended caller; it validates user input first.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "topk.h"

namespace py = pybind11;

namespace {

template <typename T>
T* pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

size_t workspace_bytes(int64_t m, int64_t n, int64_t d, int64_t k, const std::string& dtype) {
  return qrerank::make_plan({m, n, d, k, qrerank::parse_dtype(dtype)}).workspace_bytes;
}

void topk(uintptr_t queries, int64_t query_stride, uintptr_t corpus, int64_t corpus_stride, int64_t m, int64_t n,
          int64_t d, int64_t k, const std::string& dtype, uintptr_t scores, uintptr_t indices, uintptr_t workspace,
          size_t workspace_size, uintptr_t stream) {
  const qrerank::TopkArgs args{{m, n, d, k, qrerank::parse_dtype(dtype)},
                               pointer<const void>(queries),
                               query_stride,
                               pointer<const void>(corpus),
                               corpus_stride,
                               pointer<float>(scores),
                               pointer<int64_t>(indices),
                               pointer<void>(workspace),
                               workspace_size,
                               pointer<void>(stream)};
  py::gil_scoped_release release;  // launching may wait on the driver; other Python threads can run
  qrerank::topk(args);
}

}  // namespace

PYBIND11_MODULE(_topk, module) {
  module.doc() = "qrerank's fused similarity top-k CUDA kernel (see csrc/). Use qrerank.topk instead.";
  module.attr("MAX_K") = qrerank::kMaxK;
  module.attr("ALIGNMENT") = qrerank::kAlignment;
#if defined(QRERANK_EMULATE)
  module.attr("EMULATED") = true;  // built against csrc/dev/emulate.h: "device" pointers are host memory
#else
  module.attr("EMULATED") = false;
#endif
  module.def("workspace_bytes", &workspace_bytes, py::arg("m"), py::arg("n"), py::arg("d"), py::arg("k"),
             py::arg("dtype"),
             "Bytes of device workspace that topk() needs for this shape on the current CUDA device.");
  module.def("topk", &topk, py::arg("queries"), py::arg("query_stride"), py::arg("corpus"), py::arg("corpus_stride"),
             py::arg("m"), py::arg("n"), py::arg("d"), py::arg("k"), py::arg("dtype"), py::arg("scores"),
             py::arg("indices"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
             "Launch the top-k of queries [m, d] against corpus [n, d] (device pointers, row strides in elements) "
             "on `stream`, writing scores [m, k] float32 and indices [m, k] int64. Raises ValueError for bad "
             "arguments and RuntimeError for CUDA errors.");
}
