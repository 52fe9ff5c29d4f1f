"""The smallest madhatter pipeline: a source, two parallel steps, and a final step."""

from madhatter import depends, parallel, postprocess, preprocess


@preprocess
def hello():
    return [1, 2, 3, 4]


@depends(hello)
@parallel(n=4)
def job(sequence):  # receives one chunk of hello's output
    return tuple(sequence)


@depends(job)
@parallel(n=2)
def another_job(sequence_from_job):
    return tuple(sequence_from_job)


@depends(another_job)
@postprocess
def result(job_output):  # receives the whole, re-assembled output
    return list(job_output)
