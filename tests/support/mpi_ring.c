/* The MPI test image's program: one job's ranks talk point-to-point and collectively.
 *
 * Every rank sends (rank + 1) * 10 to the next rank round a ring and receives from the previous
 * one; then a 4 MiB message goes the same way (large enough for the shared-memory transport's
 * single-copy path, which needs one rank to read the other's memory); then the job sums
 * rank + 1 over all ranks (MPI_Allreduce) and rank 0 broadcasts a token (MPI_Bcast). Each rank
 * prints one line a test can check:
 *
 *     rank R of N: got G from P, big B, sum S, token T
 *
 * where B is the number of the large message's ints that hold what the sender put there (all
 * of them: 1048576). A rank started without its launcher's wire-up is a singleton
 * ("rank 0 of 1"); a broken transport fails or prints fewer.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define BIG (1 << 20)

int main(int argc, char **argv)
{
    int rank, size, got = -1, sum = 0, token = 0, good = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    int next = (rank + 1) % size, prev = (rank + size - 1) % size, sent = (rank + 1) * 10;
    MPI_Sendrecv(&sent, 1, MPI_INT, next, 7, &got, 1, MPI_INT, prev, 7, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);

    int *out = malloc(BIG * sizeof(int)), *in = malloc(BIG * sizeof(int));
    if (out == NULL || in == NULL)
        MPI_Abort(MPI_COMM_WORLD, 2);
    for (int i = 0; i < BIG; i++) {
        out[i] = rank * BIG + i;
        in[i] = -1;
    }
    MPI_Sendrecv(out, BIG, MPI_INT, next, 8, in, BIG, MPI_INT, prev, 8, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
    for (int i = 0; i < BIG; i++)
        good += in[i] == prev * BIG + i;

    int mine = rank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        token = 4242;
    MPI_Bcast(&token, 1, MPI_INT, 0, MPI_COMM_WORLD);

    printf("rank %d of %d: got %d from %d, big %d, sum %d, token %d\n", rank, size, got, prev,
           good, sum, token);
    fflush(stdout);
    free(out);
    free(in);
    MPI_Finalize();
    return 0;
}
