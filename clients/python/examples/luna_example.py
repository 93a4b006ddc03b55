"""The LUNA matching-client example, running against kim: only the import differs.

usage: python luna_example.py REDIS_URL DATA_DIR   (DATA_DIR from `kim-worker gen`)
"""

import asyncio
import sys
import time
from pathlib import Path

import numpy as np
from kim_client import MatcherClient, RawDescriptor


async def main(url: str, data: Path) -> None:
    probes = np.load(data / "mated.npy")
    identities = (data / "mated_identity.txt").read_text().split()
    client = await MatcherClient.create(url)
    print("labels:", await client.readMatchingLabels(), "| faces served:", await client.checkMatchingLabel("faces"))
    async with client.session() as conn:
        resp = await conn.match(
            descriptor=RawDescriptor(descriptor=probes[0].tobytes(), version=59),
            label="faces",
            limit=3,
            lunaRequestId=None,
            timeout=10,
        )
        print(f"probe 0 (identity {identities[0]}):", resp["status_code"], resp["result"])

        latencies, correct = [], 0
        for i in range(len(probes)):
            t = time.perf_counter()
            resp = await conn.match(
                descriptor=RawDescriptor(descriptor=probes[i].tobytes(), version=59),
                label="faces",
                limit=1,
                lunaRequestId=None,
                timeout=10,
            )
            latencies.append((time.perf_counter() - t) * 1000)
            correct += resp["result"][0][0].startswith(identities[i] + "-")
        latencies.sort()
        print(
            f"{len(probes)} sequential matches: top-1 identity correct {correct}/{len(probes)}, "
            f"latency ms p50 {latencies[len(latencies) // 2]:.2f} p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f}"
        )

        t = time.perf_counter()
        many = await asyncio.gather(
            *[
                conn.match(
                    descriptor=RawDescriptor(descriptor=p.tobytes(), version=59),
                    label="faces",
                    limit=5,
                    lunaRequestId=None,
                    timeout=10,
                )
                for p in probes
            ]
        )
        took = time.perf_counter() - t
        ok = sum(r["status_code"] == 201 for r in many)
        print(f"{len(many)} concurrent matches over one client: {ok} ok in {took * 1000:.0f} ms")

        bad = await conn.match(
            descriptor=RawDescriptor(descriptor=probes[0].tobytes(), version=60),
            label="faces",
            limit=1,
            lunaRequestId=None,
            timeout=10,
        )
        print("wrong version ->", bad["status_code"], bad["error"])
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
