/* reforge's C API: run a compiled model (the model.so of a reforge artifact, a Relax VM executable)
 * in a C or C++ program with the TVM runtime alone (libtvm_runtime.so, libtvm_ffi.so), no Python.
 *
 *   reforge_model* m = reforge_load("model.so", 0);
 *   reforge_set_input(m, "image", pixels, sizeof pixels, "float32", shape, 4);  // manifest.json's names
 *   reforge_run(m);
 *   reforge_get_output(m, 0, logits, sizeof logits);               // outputs in manifest order
 *   reforge_free(m);
 *
 * Inputs are named by the model itself (the Relax function's parameters, the names manifest.json and
 * `reforge inspect` list); the data is copied in, so the caller's buffer may be reused at once. The
 * model checks the shapes and dtypes when it runs. Outputs are numbered in manifest.json's order.
 *
 * Errors: functions returning int give 0 on success and -1 on failure, those returning a pointer give
 * NULL; reforge_last_error() then says why in one line (per calling thread, valid until its next
 * failing call). No C++ exception crosses this interface.
 *
 * Threads: a handle holds one VM with its inputs and outputs, so use each handle from one thread at a
 * time (load one handle per calling thread for concurrent requests). The kernels of a run use
 * `threads` workers of the calling thread's TVM pool (0: the pool's default, TVM_NUM_THREADS if set).
 */
#ifndef REFORGE_RUNTIME_H_
#define REFORGE_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct reforge_model reforge_model;

/* Load model.so and start its VM; `threads` as above (a count larger than TVM's pool is refused). */
reforge_model* reforge_load(const char* model_so, int threads);

/* The model's inputs: how many, and the name of the one at `index` (valid until reforge_free). */
int reforge_num_inputs(const reforge_model* model);
const char* reforge_input_name(const reforge_model* model, int index);

/* Copy the C-contiguous tensor at `data` (`nbytes` bytes: dtype "float32", "int8", "uint8", "int32",
 * "bool", ...; shape[0..ndim)) into the input called `name`. */
int reforge_set_input(reforge_model* model, const char* name, const void* data, size_t nbytes,
                      const char* dtype, const int64_t* shape, int ndim);

/* Run the model on the inputs set (every input must have been set once). */
int reforge_run(reforge_model* model);

/* After reforge_run: the number of outputs, and output `index`'s dtype, rank, shape and size in
 * bytes (pointers valid until the next reforge_run or reforge_free; any out-pointer may be NULL). */
int reforge_num_outputs(const reforge_model* model);
int reforge_output_info(const reforge_model* model, int index, const char** dtype, int* ndim,
                        const int64_t** shape, size_t* bytes);

/* Copy output `index` into `buffer`, which holds `capacity` bytes (at least the output's size). */
int reforge_get_output(const reforge_model* model, int index, void* buffer, size_t capacity);

/* Release the handle (NULL is accepted). */
void reforge_free(reforge_model* model);

/* Why the calling thread's last failing call failed ("" if none did). */
const char* reforge_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* REFORGE_RUNTIME_H_ */
