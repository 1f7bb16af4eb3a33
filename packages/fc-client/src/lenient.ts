import { z } from "zod";

/**
 * A copy of a schema whose objects drop unknown keys instead of failing. Used on responses only: a
 * newer Firecracker adding a field to an answer must not break a caller that never asked for it, while
 * requests stay strict because Firecracker itself rejects unknown fields.
 */
export function lenient<T extends z.ZodType>(schema: T): z.ZodType<z.output<T>> {
  return relax(schema) as z.ZodType<z.output<T>>;
}

function relax(schema: z.ZodType): z.ZodType {
  if (schema instanceof z.ZodObject) {
    const shape: Record<string, z.ZodType> = {};
    for (const [key, value] of Object.entries(schema.shape as Record<string, z.ZodType>))
      shape[key] = relax(value);
    return z.object(shape);
  }
  if (schema instanceof z.ZodOptional) return relax(schema.unwrap() as z.ZodType).optional();
  if (schema instanceof z.ZodNullable) return relax(schema.unwrap() as z.ZodType).nullable();
  if (schema instanceof z.ZodArray) return z.array(relax(schema.element as z.ZodType));
  return schema;
}
