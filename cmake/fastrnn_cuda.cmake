# The CUDA extension fastrnn._cuda_ext (the `cuda` backend), built from csrc/cuda/.
#
# Included by CMakeLists.txt when FASTRNN_BUILD_CUDA is ON, after find_package(Torch) (which, for
# a CUDA build of torch, has already found the CUDA toolkit) and after the `_ext` target, whose
# conventions it follows.  Uses from there: ${TORCH_LIBRARIES}, ${TORCH_PYTHON_LIBRARY},
# Python::Module, FASTRNN_OPT, FASTRNN_OUTPUT_DIR.  Knobs (cache variables):
#   FASTRNN_CUDA_ARCHS  compute capabilities as CMake writes them, e.g. "80;90" (default)
#   FASTRNN_CUDA_PTX    ON: also embed PTX for the last arch, so newer GPUs can JIT it (default ON)
#
# Host code (rnn.cpp) needs only ATen's generic API and c10/cuda (stream, device guard): the
# GEMMs go through at::mm_out, so neither cuBLAS headers nor a direct cuBLAS link are needed.
# The kernels (pointwise.cu) include no torch headers.
set(FASTRNN_CUDA_ARCHS "80;90" CACHE STRING "CUDA compute capabilities for fastrnn._cuda_ext, e.g. 80;90")
option(FASTRNN_CUDA_PTX "Embed PTX for the newest arch in FASTRNN_CUDA_ARCHS" ON)

enable_language(CUDA)
# CUDA::cudart gives the host file the CUDA headers c10/cuda includes (a CUDA torch's targets
# usually bring it too; naming it keeps the build independent of how torch's cmake spells it).
find_package(CUDAToolkit REQUIRED)

# "80;90" + PTX -> "80-real;90-real;90-virtual": SASS for each arch, PTX for the newest only.
set(_fastrnn_cuda_archs "")
list(LENGTH FASTRNN_CUDA_ARCHS _fastrnn_n_archs)
if(_fastrnn_n_archs EQUAL 0)
  message(FATAL_ERROR "fastrnn: FASTRNN_CUDA_ARCHS is empty; give compute capabilities like \"80;90\"")
endif()
foreach(_arch IN LISTS FASTRNN_CUDA_ARCHS)
  string(REGEX REPLACE "[-_](real|virtual)$" "" _arch "${_arch}")
  list(APPEND _fastrnn_cuda_archs "${_arch}-real")
endforeach()
if(FASTRNN_CUDA_PTX)
  list(GET FASTRNN_CUDA_ARCHS -1 _fastrnn_last_arch)
  string(REGEX REPLACE "[-_](real|virtual)$" "" _fastrnn_last_arch "${_fastrnn_last_arch}")
  list(APPEND _fastrnn_cuda_archs "${_fastrnn_last_arch}-virtual")
endif()
message(STATUS "fastrnn: building _cuda_ext for CUDA architectures ${_fastrnn_cuda_archs}")

add_library(_cuda_ext MODULE csrc/cuda/rnn.cpp csrc/cuda/pointwise.cu)
target_include_directories(_cuda_ext PRIVATE csrc/cuda)
target_compile_definitions(_cuda_ext PRIVATE TORCH_EXTENSION_NAME=_cuda_ext TORCH_API_INCLUDE_EXTENSION_H)
# No fast-math for the kernels: expf/tanhf must stay the accurate versions (torch's numerics).
target_compile_options(_cuda_ext PRIVATE "$<$<COMPILE_LANGUAGE:CXX>:${FASTRNN_OPT}>" "$<$<COMPILE_LANGUAGE:CUDA>:-O3>")
target_link_libraries(_cuda_ext PRIVATE ${TORCH_LIBRARIES} ${TORCH_PYTHON_LIBRARY} Python::Module CUDA::cudart)
# The shared CUDA runtime: the one torch has already loaded, not a second static copy.
set_target_properties(_cuda_ext PROPERTIES
  PREFIX ""
  CUDA_ARCHITECTURES "${_fastrnn_cuda_archs}"
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_RUNTIME_LIBRARY Shared
  CXX_VISIBILITY_PRESET hidden
  CUDA_VISIBILITY_PRESET hidden)
# torch >= 2.10's headers need C++20 (TorchConfig.cmake records it on the `torch` target).
if(TARGET torch)
  get_target_property(_fastrnn_torch_std torch CXX_STANDARD)
  if(_fastrnn_torch_std AND _fastrnn_torch_std GREATER 17)
    set_target_properties(_cuda_ext PROPERTIES CXX_STANDARD ${_fastrnn_torch_std})
  endif()
endif()
if(Python_SOABI)
  set_target_properties(_cuda_ext PROPERTIES SUFFIX ".${Python_SOABI}${CMAKE_SHARED_MODULE_SUFFIX}")
endif()
if(FASTRNN_OUTPUT_DIR)
  set_target_properties(_cuda_ext PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${FASTRNN_OUTPUT_DIR}")
endif()
