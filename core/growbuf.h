/* A growable byte buffer for the geo build loops (MaxMind DB walk, table painters): push items, hand the bytes on. */
#ifndef REGIONLOCK_GROWBUF_H
#define REGIONLOCK_GROWBUF_H

#include <Python.h>
#include <string.h>

/* Zero-initialized it is empty; PyMem_Free(data) frees it. The GIL is held: PyMem_Realloc needs it. */
typedef struct { char* data; size_t length; size_t capacity; } rl_buf;

/* Room for extra more bytes, doubling from 4 KiB; -1 with MemoryError set if memory runs out. */
static int rl_buf_reserve(rl_buf* b, size_t extra) {
    size_t cap = b->capacity ? b->capacity : 4096;
    void* p;
    while (cap < b->length + extra) cap *= 2;
    if (cap != b->capacity) {
        p = PyMem_Realloc(b->data, cap);
        if (p == NULL) { PyErr_NoMemory(); return -1; }
        b->data = (char*)p;
        b->capacity = cap;
    }
    return 0;
}

/* Append size bytes at item; -1 with MemoryError set if memory runs out. */
static inline int rl_buf_push(rl_buf* b, const void* item, size_t size) {
    if (b->length + size > b->capacity && rl_buf_reserve(b, size) < 0) return -1;
    memcpy(b->data + b->length, item, size);
    b->length += size;
    return 0;
}

#endif
