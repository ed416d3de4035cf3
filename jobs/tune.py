"""Ray job: synthgen tune on a running cluster (see synthgen/jobs.py and README "Run on a cluster").

    ray job submit --working-dir . -- python jobs/tune.py --config my.yaml --storage s3://bucket/path
"""
import os
import sys

# The submitted working directory's synthgen, not whatever version a node has installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synthgen.jobs import run_job  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_job("tune"))
