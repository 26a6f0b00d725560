"""The seed's examples, ported from Celery by changing the import line and the class name.

Run a worker in this directory:      conveyor worker -A shop:app
then, from another shell:            python -c "from shop import factorial; print(factorial.delay(5).get(timeout=10))"
With nothing configured, broker and backend are one SQLite file, ./conveyor.db.
"""

from conveyor import Conveyor

app = Conveyor("shop")


@app.task
def factorial(n):
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result


@app.task
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@app.task(bind=True, max_retries=3)
def my_task(self, arg1, arg2):
    try:
        # Your task logic here
        result = arg1 / arg2
        return result
    except ZeroDivisionError as exc:
        # Handle a specific exception (e.g., divide by zero)
        raise self.retry(exc=exc, countdown=1)  # Retry the task after 1 second
    except Exception as exc:
        # Handle other exceptions
        raise self.retry(exc=exc, countdown=3)  # Retry the task after 3 seconds
    # If the task still fails after retries, it will be marked as failed
