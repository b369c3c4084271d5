"""`autoprompt compare`: learned selection (SPT-DARTS, dynamic prompting) against discrete search and baselines.

Like `study`, this package imports nothing on import (Ray and matplotlib load when used).
"""
