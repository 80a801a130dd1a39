/* A CPU stand-in for the slice of NCCL that kernels/cuda/nccl.cu uses
 * (kernels/cuda/emu/run.sh): ranks are processes of one machine, which meet
 * in a folder the unique id names; each operation is a stream op (recorded
 * in a capture, run when the graph runs) in which every rank writes its
 * buffer to a file of that folder and adds all ranks' files in rank order,
 * so every rank gets the same bits. A peer that does not come within the
 * communicator's wait (EMU_NCCL_WAIT_MS, default 60000) is an asynchronous
 * error, as a real communicator's would be; an aborted communicator does
 * nothing. It checks our calls' order, arguments and stream plumbing, not
 * NCCL. */
#pragma once
#include "cuda_runtime.h"

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
} ncclResult_t;
typedef enum { ncclUint8 = 1, ncclFloat32 = 7, ncclBfloat16 = 9 } ncclDataType_t;
typedef enum { ncclSum = 0, ncclAvg = 4 } ncclRedOp_t;
typedef struct { char internal[128]; } ncclUniqueId;
struct emu_nccl_comm;
typedef emu_nccl_comm *ncclComm_t;
typedef struct { int blocking; } ncclConfig_t;
#define NCCL_CONFIG_INITIALIZER {1}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *send, void *recv, size_t bytes_or_count,
                           ncclDataType_t type, int root, ncclComm_t comm, cudaStream_t stream);
const char *ncclGetErrorString(ncclResult_t r);
