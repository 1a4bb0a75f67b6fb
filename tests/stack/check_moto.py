#!/usr/bin/env python3
"""Smoke test for tests/stack/moto_server.py (run with the project venv).

Usage: .venv/bin/python tests/stack/check_moto.py [PORT]
  With PORT: checks an already running server on 127.0.0.1:PORT.
  Without:   spawns moto_server.py on a free port, checks it, stops it.

Checks the DynamoDB / Secrets Manager behaviour tollgate relies on:
pk/sk table, put/get, conditional update with
ReturnValuesOnConditionCheckFailure=ALL_OLD, UpdateTimeToLive,
TransactWriteItems cancellation reasons, secrets, and that concurrent
optimistic increments lose no update (the single-threaded guarantee).
"""

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
RESULTS = {"passed": 0, "failed": 0}


def check(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every failure
        RESULTS["failed"] += 1
        print(f"FAIL {name}: {e!r}")
    else:
        RESULTS["passed"] += 1
        print(f"ok   {name}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto did not come up at {url}")


def client(service, url):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


def run_checks(url):
    ddb = client("dynamodb", url)
    table = "check_moto"

    def create_table():
        ddb.create_table(
            TableName=table,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        ddb.get_waiter("table_exists").wait(TableName=table)

    def put_get():
        ddb.put_item(
            TableName=table,
            Item={"pk": {"S": "k#1"}, "sk": {"S": "meta"}, "n": {"N": "1"}},
        )
        item = ddb.get_item(
            TableName=table,
            Key={"pk": {"S": "k#1"}, "sk": {"S": "meta"}},
            ConsistentRead=True,
        )["Item"]
        assert item["n"] == {"N": "1"}, item

    def conditional_all_old():
        key = {"pk": {"S": "k#1"}, "sk": {"S": "meta"}}
        ddb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET n = n + :one",
            ConditionExpression="n = :cur",
            ExpressionAttributeValues={":one": {"N": "1"}, ":cur": {"N": "1"}},
        )
        try:
            ddb.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET n = n + :one",
                ConditionExpression="n = :cur",
                ExpressionAttributeValues={":one": {"N": "1"}, ":cur": {"N": "1"}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            err = e.response["Error"]
            assert err["Code"] == "ConditionalCheckFailedException", err
            old = e.response.get("Item")
            assert old and old["n"] == {"N": "2"}, e.response
        else:
            raise AssertionError("conditional update should have failed")

    def ttl():
        ddb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )
        d = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert d["TimeToLiveStatus"] in ("ENABLED", "ENABLING"), d
        assert d["AttributeName"] == "expires_at", d

    def transact_cancel():
        try:
            ddb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {"pk": {"S": "k#2"}, "sk": {"S": "meta"}},
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": table,
                            "Key": {"pk": {"S": "k#1"}, "sk": {"S": "meta"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as e:
            assert e.response["Error"]["Code"] == "TransactionCanceledException", e
            codes = [r.get("Code") for r in e.response["CancellationReasons"]]
            assert codes == ["None", "ConditionalCheckFailed"], codes
        else:
            raise AssertionError("transaction should have been cancelled")
        got = ddb.get_item(
            TableName=table, Key={"pk": {"S": "k#2"}, "sk": {"S": "meta"}}
        )
        assert "Item" not in got, "cancelled transaction wrote an item"

    def concurrent_increments(threads=2, per_thread=50):
        key = {"pk": {"S": "ctr"}, "sk": {"S": "ctr"}}
        ddb.put_item(TableName=table, Item={**key, "n": {"N": "0"}})

        def worker():
            c = client("dynamodb", url)
            done = 0
            while done < per_thread:
                cur = c.get_item(TableName=table, Key=key, ConsistentRead=True)
                n = cur["Item"]["n"]["N"]
                try:
                    c.update_item(
                        TableName=table,
                        Key=key,
                        UpdateExpression="SET n = :new",
                        ConditionExpression="n = :cur",
                        ExpressionAttributeValues={
                            ":cur": {"N": n},
                            ":new": {"N": str(int(n) + 1)},
                        },
                    )
                    done += 1
                except ClientError as e:
                    if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                        raise

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        n = ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]["n"]
        assert n == {"N": str(threads * per_thread)}, n

    def secrets():
        sm = client("secretsmanager", url)
        sm.create_secret(Name="tollgate/check", SecretString='{"k":"v"}')
        v = sm.get_secret_value(SecretId="tollgate/check")
        assert v["SecretString"] == '{"k":"v"}', v

    def reset():
        req = urllib.request.Request(url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass
        assert table not in ddb.list_tables()["TableNames"]

    check("dynamodb create_table pk/sk", create_table)
    check("dynamodb put/get", put_get)
    check("dynamodb conditional update ALL_OLD", conditional_all_old)
    check("dynamodb UpdateTimeToLive", ttl)
    check("dynamodb TransactWriteItems cancellation reasons", transact_cancel)
    check("dynamodb concurrent optimistic increments", concurrent_increments)
    check("secretsmanager create/get", secrets)
    check("moto-api reset", reset)


def main():
    proc = None
    if len(sys.argv) > 1:
        port = int(sys.argv[1])
    else:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "moto_server.py"), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        run_checks(url)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    sys.exit(1 if RESULTS["failed"] else 0)


if __name__ == "__main__":
    main()
